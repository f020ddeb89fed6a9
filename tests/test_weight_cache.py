"""XNNPACK's weight cache (sd2tflite/runtime/weight_cache.py): the same bits as the Interpreter, one
cache file per .tflite written once under its sha256 and mapped after, never a half-written file."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from sd2tflite.core.fsutil import is_temp_name
from sd2tflite.core.manifest import load_manifest

from .conftest import run, seeded_inputs


def _same_outputs(expected: dict, actual: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype and actual[name].shape == expected[name].shape
        np.testing.assert_array_equal(actual[name], expected[name])  # bit for bit, not close


@pytest.mark.parametrize("quant", ["fp32", "dynamic", "int8"])
def test_cached_components_give_the_same_bits_and_map_their_file_again(quant, tiny_sets, tiny_dims, tmp_path):
    from sd2tflite.runtime.litert import CompiledRunner, load_component
    from sd2tflite.runtime.weight_cache import is_complete

    set_dir, folder = tiny_sets[quant], tmp_path / "xnnpack"
    manifest = load_manifest(set_dir)
    samples = {c: seeded_inputs(c, tiny_dims) for c in manifest.components}
    expected = {c: [load_component(set_dir, c)(**s) for s in samples[c]] for c in manifest.components}
    notes: list[str] = []
    for component in manifest.components:
        cached = load_component(set_dir, component, weight_cache=folder, note=notes.append)
        refused = [n for n in notes if "change" in n]  # XNNPACK's cache changed this file's outputs: unused
        assert all(isinstance(r, CompiledRunner) for r in cached.runners) or refused  # UNet: 2 chained parts
        for sample, reference in zip(samples[component], expected[component]):
            _same_outputs(reference, cached(**sample))

    files = sorted(folder.glob("*.xnnpack"))  # each beside its sha256 record
    unusable = [r for r in folder.glob("*.sha256") if r.read_text().startswith("unusable ")]
    assert len(unusable) == len([n for n in notes if "change" in n])
    if unusable:
        pytest.skip(f"XNNPACK's weight cache changes the outputs of {len(unusable)} {quant} files (refused)")
    assert sorted(f.name.split("-")[0] for f in files) == sorted(a.sha256 for a in manifest.artifacts)
    assert all(is_complete(f) for f in files)
    assert sum(f.stat().st_size for f in files) > 0.5 * sum(a.bytes for a in manifest.artifacts)
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    again = load_component(set_dir, "diffusion", weight_cache=folder)  # maps the files written above
    _same_outputs(expected["diffusion"][0], again(**samples["diffusion"][0]))
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.glob("*.xnnpack")} == before


def test_half_written_files_and_leftovers_are_never_used(tiny_sets, tiny_dims, tmp_path):
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.runtime.weight_cache import cache_file, is_complete

    set_dir, folder = tiny_sets["fp32"], tmp_path / "xnnpack"
    folder.mkdir()
    artifact = load_manifest(set_dir).parts_of("decoder")[0]
    target = cache_file(artifact.sha256, folder)
    header = struct.Struct("<QQQB")
    target.write_bytes(header.pack(0, 32, 0, 0) + bytes(4096))  # XNNPACK writes its header last
    assert not is_complete(target)
    assert not is_complete(folder / "missing")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = target.with_name(f".{target.name}.tmp-{int(dead.stdout)}")  # an interrupted build
    leftover.write_bytes(b"partial")

    sample = seeded_inputs("decoder", tiny_dims)[0]
    expected = load_component(set_dir, "decoder")(**sample)
    _same_outputs(expected, load_component(set_dir, "decoder", weight_cache=folder)(**sample))
    assert is_complete(target) and not leftover.exists()
    assert not [p for p in folder.iterdir() if is_temp_name(p.name)]


def test_an_unwritable_cache_folder_falls_back_to_the_interpreter(tiny_sets, tiny_dims, tmp_path):
    from sd2tflite.runtime.litert import CompiledRunner, load_component

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sample = seeded_inputs("decoder", tiny_dims)[0]
    component = load_component(tiny_sets["fp32"], "decoder", weight_cache=blocker / "xnnpack")
    assert not isinstance(component.runners[0], CompiledRunner)
    _same_outputs(load_component(tiny_sets["fp32"], "decoder")(**sample), component(**sample))


def test_generate_writes_the_cache_and_gives_the_same_image(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setenv("SD2TFLITE_CACHE", str(tmp_path / "cache"))
    set_dir = tiny_sets["fp32"]
    images = {}
    for flag in ("--no-weight-cache", "--weight-cache", "--weight-cache"):  # none, written, mapped
        out = tmp_path / f"out{len(images)}.png"
        result = run(["generate", str(set_dir), "a red bicycle", "--steps", "2", "-o", str(out), "-q", flag])
        assert result.exit_code == 0, result.output
        images[len(images)] = out.read_bytes()
        files = sorted((tmp_path / "cache" / "xnnpack").glob("*.xnnpack"))
        assert len(files) == (0 if flag == "--no-weight-cache" else 4)  # text encoder, 2 UNet parts, decoder
    assert images[0] == images[1] == images[2]
