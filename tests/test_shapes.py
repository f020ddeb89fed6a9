"""The shapes world of the trained tiny model: grammar, renderer, held-out set, adherence checker."""

from __future__ import annotations

import numpy as np
import pytest

from sd2tflite.core.errors import UsageError
from sd2tflite.verify import shapes


def test_grammar_round_trips_and_refuses_other_text():
    scene = shapes.parse_caption("a red circle on a blue background, top left")
    assert scene == shapes.Scene("red", "circle", "blue", "top left")
    assert shapes.parse_caption(scene.caption) == scene
    with pytest.raises(UsageError, match="not in the shapes grammar"):
        shapes.parse_caption("a photograph of an astronaut riding a horse")
    with pytest.raises(UsageError, match="pick two colors"):
        shapes.parse_caption("a red circle on a red background, center")


def test_held_out_prompts_are_fixed_disjoint_and_balanced():
    every = shapes.all_scenes()
    assert len(every) == 3 * 6 * 5 * 5 == 450
    held_out = [shapes.parse_caption(p) for p, _ in shapes.held_out_prompts()]
    assert len(held_out) == 36 and len(shapes.training_scenes()) == 414
    assert not set(held_out) & set(shapes.training_scenes())
    assert [seed for _, seed in shapes.held_out_prompts()] == list(range(1000, 1036))
    for attribute, values in (("shape", shapes.SHAPES), ("color", shapes.COLORS), ("background", shapes.COLORS)):
        assert {v: sum(getattr(s, attribute) == v for s in held_out) for v in values} == {v: 36 // len(values)
                                                                                          for v in values}
    # Every (color, background) pair a held-out prompt uses is also trained, with other shapes or positions.
    trained_pairs = {(s.color, s.background) for s in shapes.training_scenes()}
    assert all((s.color, s.background) in trained_pairs for s in held_out)
    assert shapes.held_out_prompts(12) == [shapes.held_out_prompts()[i * 3] for i in range(12)]
    assert shapes.held_out_prompts(1) == [("a red circle on a blue background, center", 1000)]


def test_renderer_is_deterministic_in_range_and_seeded():
    a = shapes.render("a red circle on a blue background, top left", seed=3)
    assert a.shape == (128, 128, 3) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1
    assert np.array_equal(a, shapes.render("a red circle on a blue background, top left", seed=3))
    assert not np.array_equal(a, shapes.render("a red circle on a blue background, top left", seed=4))
    # Two colors only: the shape's and the background's.
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 2


def test_checker_scores_the_renderers_own_pictures_100_percent():
    scenes = shapes.all_scenes()
    result = shapes.adherence([shapes.render(s, seed=i) for i, s in enumerate(scenes)], scenes)
    assert result.score == 1.0
    assert result.per_attribute == {"color": 1.0, "position": 1.0, "shape": 1.0, "background": 1.0}
    fills = {shape: [c.fill_ratio for c in result.checks if c.expected.shape == shape] for shape in shapes.SHAPES}
    assert 0.75 < min(fills["circle"]) and max(fills["circle"]) < 0.82
    assert min(fills["square"]) == 1.0
    assert 0.49 < min(fills["triangle"]) and max(fills["triangle"]) < 0.54


def test_checker_reads_uint8_pictures_and_tolerates_blur_and_noise():
    caption = "a yellow triangle on a black background, bottom right"
    image = shapes.render(caption, seed=7)
    as_uint8 = np.round((image + 1) * 127.5).astype(np.uint8)
    assert shapes.check(as_uint8, caption).score == 1.0
    blurred = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1) + np.roll(image, (1, 1), (0, 1))) / 4
    noisy = blurred + np.random.default_rng(0).normal(0, 0.08, image.shape).astype(np.float32)
    assert shapes.check(noisy, caption).score == 1.0


def test_checker_scores_wrong_pictures_low():
    caption = "a red circle on a blue background, top left"
    wrong_color = shapes.check(shapes.render("a green circle on a blue background, top left", 1), caption)
    assert wrong_color.correct == {"color": False, "position": True, "shape": True, "background": True}
    assert wrong_color.score == 0.75
    everything_wrong = shapes.check(shapes.render("a white square on a yellow background, bottom right", 1), caption)
    assert everything_wrong.score == 0.0
    flat = shapes.check(np.full((128, 128, 3), -0.7, np.float32), caption)  # nothing drawn
    assert flat.found is None and flat.score == 0.0
    result = shapes.adherence([shapes.render(caption, 1), np.full((128, 128, 3), -0.7, np.float32)], [caption] * 2)
    assert result.score == 0.5 and result.per_attribute["color"] == 0.5
    with pytest.raises(UsageError, match="one caption per image"):
        shapes.adherence([shapes.render(caption, 1)], [caption, caption])


def test_tiny_tokenizer_reads_the_grammars_words_whole():
    from sd2tflite.runtime.tokenizer import TINY_WORDS, ClipTokenizer

    words = {w for s in shapes.all_scenes() for w in s.caption.replace(",", " ").split()}
    assert words == set(TINY_WORDS)
    tokenizer = ClipTokenizer.generated()
    ids = tokenizer.encode("a red circle on a blue background, top left")
    assert len(ids) == 2 + 10  # start, 9 words and the comma, end
    assert len({tokenizer.encode(w)[1] for w in TINY_WORDS}) == len(TINY_WORDS)
