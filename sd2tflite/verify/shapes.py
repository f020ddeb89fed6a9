"""The trained tiny model's world: captions from a small grammar, a seeded renderer of the pictures
they describe, a fixed held-out prompt set, and a prompt-adherence checker that needs no model.

"a red circle on a blue background, top left" is one flat-colored shape on a flat background. The
checker reads the background from the border pixels, the shape as the largest blob of pixels far
from it, the blob's color (nearest named color of its median), its centroid's position bucket, and
its rough shape from the fill ratio of its bounding box (circle pi/4, square 1, triangle 1/2) and
how low in that box its centroid sits (a triangle's 2/3, else 1/2).
numpy + stdlib only (Pillow for PNG files), so a runtime-side tool could use it too.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UsageError

IMAGE_SIZE = 128

# RGB 0..255; every pair is at least ~150 apart, so a blurry decode still lands on the right name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# Anchor of each position bucket as (x, y) fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
ATTRIBUTES = ("color", "position", "shape", "background")

_CAPTION = re.compile(
    rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) on a ({'|'.join(COLORS)}) background, "
    rf"({'|'.join(POSITIONS)})$"
)


@dataclass(frozen=True)
class Scene:
    """What a caption says."""

    color: str
    shape: str
    background: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background, {self.position}"


def parse_caption(caption: str) -> Scene:
    match = _CAPTION.match(" ".join(caption.lower().split()))
    if not match:
        raise UsageError(f"{caption!r} is not in the shapes grammar: write e.g. "
                         "'a red circle on a blue background, top left'")
    color, shape, background, position = match.groups()
    if color == background:
        raise UsageError(f"{caption!r} draws a {color} shape on a {color} background: pick two colors")
    return Scene(color, shape, background, position)


def all_scenes() -> list[Scene]:
    """Every caption of the grammar (shape color differs from the background), in a fixed order."""
    return [Scene(c, s, b, p) for s in SHAPES for c in COLORS for b in COLORS if b != c for p in POSITIONS]


def is_held_out(scene: Scene) -> bool:
    """36 of the 450 combinations are never trained on; every attribute value, and every
    (color, background) pair, still appears in training with other shapes and positions."""
    # Coefficients picked so the 36 held-out prompts spread evenly over shapes, positions and colors.
    index = (2 * SHAPES.index(scene.shape) + list(COLORS).index(scene.color)
             + 7 * list(COLORS).index(scene.background) + 4 * list(POSITIONS).index(scene.position))
    return index % 10 == 0


def training_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not is_held_out(s)]


def calibration_captions(count: int = 8) -> list[str]:
    """Training captions spread over the grammar (never a held-out one): the prompts to record int8
    calibration from, as a user would calibrate on prompts like the ones they draw."""
    scenes = training_scenes()
    return [scenes[i * len(scenes) // count + 7].caption for i in range(count)]


def held_out_prompts(count: int | None = None) -> list[tuple[str, int]]:
    """(caption, seed) of the held-out set: combinations training never saw, each with a fixed seed
    for its noise (and for its reference picture). `count`: the first COUNT, spread over the set."""
    prompts = [(s.caption, 1000 + i) for i, s in enumerate(s for s in all_scenes() if is_held_out(s))]
    if count is None:
        return prompts
    if not 1 <= count <= len(prompts):
        raise UsageError(f"the held-out set has {len(prompts)} prompts: ask for 1 to {len(prompts)}")
    # Spread the pick over the set, so a short list still covers every shape and position.
    return [prompts[i * len(prompts) // count] for i in range(count)]


# ---------------------------------------------------------------- rendering


def render(caption: str | Scene, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """The picture a caption describes, as (size, size, 3) float32 in [-1, 1]. The seed moves the
    shape a little inside its position bucket and varies its size."""
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    rng = np.random.default_rng(seed)
    half = size * rng.uniform(0.125, 0.19)  # 16..24 px at 128
    ax, ay = POSITIONS[scene.position]
    cx = size * ax + size * rng.uniform(-0.045, 0.045)
    cy = size * ay + size * rng.uniform(-0.045, 0.045)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    if scene.shape == "circle":
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif scene.shape == "square":
        mask = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    else:  # upright isosceles triangle: apex at the top, base at the bottom of a 2*half box
        top, bottom = cy - half, cy + half
        width_at_y = (y - top) / (bottom - top) * half  # half-width grows from 0 at the apex
        mask = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= width_at_y)
    image = np.empty((size, size, 3), np.float32)
    image[...] = _unit(COLORS[scene.background])
    image[mask] = _unit(COLORS[scene.color])
    return image


def _unit(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(rgb, np.float32) / 127.5 - 1.0


# ---------------------------------------------------------------- checking


@dataclass(frozen=True)
class Check:
    """What the checker found in one picture, against what its caption asked for."""

    expected: Scene
    found: Scene | None  # None: no shape found (found_background is still read)
    found_background: str
    fill_ratio: float
    shape_pixels: int

    @property
    def correct(self) -> dict[str, bool]:
        found = self.found
        return {
            "color": found is not None and found.color == self.expected.color,
            "position": found is not None and found.position == self.expected.position,
            "shape": found is not None and found.shape == self.expected.shape,
            "background": self.found_background == self.expected.background,
        }

    @property
    def score(self) -> float:
        """Fraction of the four attributes right."""
        return sum(self.correct.values()) / len(ATTRIBUTES)


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float [-1, 1] pixels as float32 [-1, 1], shape (h, w, 3)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise UsageError(f"an image of shape {pixels.shape} is not (height, width, 3) RGB: pass one RGB picture")
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 127.5 - 1.0
    return np.clip(pixels.astype(np.float32), -1.0, 1.0)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return to_unit(np.asarray(image.convert("RGB")))


def _nearest_color(rgb_unit: np.ndarray) -> str:
    names = list(COLORS)
    table = np.stack([_unit(COLORS[n]) for n in names])
    return names[int(np.argmin(np.linalg.norm(table - rgb_unit, axis=1)))]


# A pixel belongs to the shape when it is this far (Euclidean, [-1, 1] units) from the background:
# under 40 % of the closest two named colors' distance (green-black, 1.30), above a decoder's blur.
_FAR = 0.5
_MIN_PIXELS = 20  # a blob smaller than this is noise, not a drawn shape


def check(image: np.ndarray, caption: str | Scene) -> Check:
    """Reads one picture and compares it with its caption."""
    expected = caption if isinstance(caption, Scene) else parse_caption(caption)
    pixels = to_unit(image)
    h, w, _ = pixels.shape
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = _nearest_color(background_rgb)
    far = _largest_blob(np.linalg.norm(pixels - background_rgb, axis=-1) > _FAR)
    if far.sum() < _MIN_PIXELS:
        return Check(expected, None, background, 0.0, int(far.sum()))
    # The outline: pixels nearer the shape's color than the background's (the 50 % contour of a blur).
    shape_rgb = np.median(pixels[far], axis=0)
    blob = _largest_blob(np.linalg.norm(pixels - shape_rgb, axis=-1) < np.linalg.norm(pixels - background_rgb, axis=-1))
    count = int(blob.sum())
    ys, xs = np.nonzero(blob)
    top, height = ys.min(), ys.max() - ys.min() + 1
    fill = count / float(height * (xs.max() - xs.min() + 1))
    color = _nearest_color(np.median(pixels[blob], axis=0))
    cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    shape = _shape_class(fill, (ys.mean() - top + 0.5) / height)
    return Check(expected, Scene(color, shape, background, position), background, fill, count)


def _shape_class(fill: float, centroid_depth: float) -> str:
    """Triangle: its mass sits low in its box (centroid 2/3 down, circle and square 1/2) or fills
    half of it; else square above a fill of 0.855, circle below (pi/4 and 1 drawn; a decoder's blur
    rounds corners and fills triangles in: on the trained VAE's round trip of all 450 captions these
    bounds get 93 % of shapes right, and the renderer's own pictures all)."""
    if centroid_depth > 0.54 or fill < 0.65:
        return "triangle"
    return "square" if fill > 0.855 else "circle"


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (stray far pixels are dropped)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    best, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


@dataclass(frozen=True)
class Adherence:
    """Prompt adherence over a set of pictures: the mean score and each attribute's accuracy."""

    checks: tuple[Check, ...]

    @property
    def score(self) -> float:
        return float(np.mean([c.score for c in self.checks])) if self.checks else 0.0

    @property
    def per_attribute(self) -> dict[str, float]:
        return {a: float(np.mean([c.correct[a] for c in self.checks])) for a in ATTRIBUTES}

    def to_json(self) -> dict:
        return {
            "score": self.score,
            "per_attribute": self.per_attribute,
            "images": [{"caption": c.expected.caption, "score": c.score,
                        "found": c.found.caption if c.found else None,
                        "found_background": c.found_background, "fill_ratio": round(c.fill_ratio, 3),
                        "shape_pixels": c.shape_pixels} for c in self.checks],
        }


def adherence(images, captions) -> Adherence:
    """Checks each picture against its caption."""
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise UsageError(f"{len(images)} images for {len(captions)} captions: pass one caption per image")
    return Adherence(tuple(check(i, c) for i, c in zip(images, captions)))
