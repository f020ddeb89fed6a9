"""The hostile-input battery, by class: each test draws several instances of one class of careless
or hostile input (damaged cache files, non-finite weights, paths that leave their folder, headers
that lie, limits) and asserts the contract: a clean result, or one line naming the file or
option and the fix, nothing half-written, nothing read outside the inputs the user named."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.fsutil import is_temp_name
from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run, seeded_inputs

# ---------------------------------------------------------------- the weight cache


def _flip(offsets_from):
    def damage(path: Path, other: Path) -> None:
        data = bytearray(path.read_bytes())
        for offset in offsets_from(len(data)):
            data[offset] ^= 0x5A
        path.write_bytes(bytes(data))
    return damage


def _replace_with(make):
    def damage(path: Path, other: Path) -> None:
        path.write_bytes(make(path.read_bytes(), other.read_bytes()))
    return damage


def _record(make):
    def damage(path: Path, other: Path) -> None:
        record = path.with_name(path.name + ".sha256")
        make(record, other.with_name(other.name + ".sha256"))
    return damage


_rng = np.random.default_rng(27)
CACHE_DAMAGE = {
    "a few bytes in the packed weights": _flip(lambda n: _rng.integers(4096, n, 4)),
    "one byte at the end": _flip(lambda n: [n - 1]),
    "the header's stale flag": _flip(lambda n: [24]),
    "truncated": _replace_with(lambda own, other: own[: len(own) // 3]),
    "garbage appended": _replace_with(lambda own, other: own + b"\0" * 4096),
    "zeros of the same size": _replace_with(lambda own, other: bytes(len(own))),
    "another model's cache file (foreign)": _replace_with(lambda own, other: other),
    "another model's file and record": lambda path, other: (
        shutil.copyfile(other, path), _record(lambda r, o: shutil.copyfile(o, r))(path, other)),
    "record deleted": _record(lambda r, o: r.unlink()),
    "record not a digest": _record(lambda r, o: r.write_bytes(b"\xff\xfe not hex")),
}


@pytest.fixture(scope="module")
def decoder_cache(tiny_sets, tiny_dims, tmp_path_factory):
    """The decoder's and the image encoder's cache files, built once; each test damages a copy."""
    from sd2tflite.runtime.litert import load_component

    folder = tmp_path_factory.mktemp("xnnpack")
    set_dir = tiny_sets["fp32"]
    sample = seeded_inputs("decoder", tiny_dims)[0]
    expected = load_component(set_dir, "decoder")(**sample)
    for component in ("decoder", "image_encoder"):
        load_component(set_dir, component, weight_cache=folder)
    return folder, sample, expected


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_weight_cache_never_changes_a_result(damage, decoder_cache, tiny_sets, tmp_path):
    from sd2tflite.runtime.integrity import file_sha256
    from sd2tflite.runtime.litert import CompiledRunner, load_component
    from sd2tflite.runtime.weight_cache import cache_file, problem

    built, sample, expected = decoder_cache
    folder = Path(shutil.copytree(built, tmp_path / "xnnpack"))
    set_dir = tiny_sets["fp32"]
    target, other = (cache_file(file_sha256(set_dir / f"{c}.tflite", reuse=True), folder)
                     for c in ("decoder", "image_encoder"))
    CACHE_DAMAGE[damage](target, other)
    assert problem(target) is not None  # the check sees it

    notes: list[str] = []
    component = load_component(set_dir, "decoder", weight_cache=folder, note=notes.append)
    assert isinstance(component.runners[0], CompiledRunner)
    got = component(**sample)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])  # the same bits as without a cache
    assert problem(target) is None  # rebuilt, recorded
    assert len(notes) == 1 and notes[0].startswith(f"weight cache file {target}") and "rebuilt" in notes[0]
    assert not [p for p in folder.iterdir() if is_temp_name(p.name)]


def _no_room(monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    return lambda tmp_path: tmp_path / "cache"


CACHE_FOLDERS = {
    "a file where the folder goes": lambda tmp_path: (tmp_path / "f").write_text("") or tmp_path / "f" / "x",
    "under /proc": lambda tmp_path: Path("/proc/sd2tflite-no-such-folder/xnnpack"),
    "a name over the OS limit": lambda tmp_path: tmp_path / ("n" * 300),
}


@pytest.mark.parametrize("folder", [*CACHE_FOLDERS, "no room"])
def test_a_cache_folder_that_takes_no_file_runs_without_it_and_says_so(folder, tiny_sets, tiny_dims, tmp_path,
                                                                      monkeypatch):
    from sd2tflite.runtime.litert import CompiledRunner, load_component

    path = _no_room(monkeypatch)(tmp_path) if folder == "no room" else CACHE_FOLDERS[folder](tmp_path)
    sample = seeded_inputs("decoder", tiny_dims)[0]
    notes: list[str] = []
    component = load_component(tiny_sets["fp32"], "decoder", weight_cache=path, note=notes.append)
    assert not isinstance(component.runners[0], CompiledRunner)
    expected = load_component(tiny_sets["fp32"], "decoder")(**sample)
    for name, value in component(**sample).items():
        np.testing.assert_array_equal(value, expected[name])
    assert len(notes) == 1 and notes[0].startswith("weight cache folder") and "without it" in notes[0], notes


def _generate_process(set_dir, out, cache, *extra, limit=None):
    def limited():
        if limit is not None:  # a quota: writes past `limit` bytes fail (the writer gets SIGXFSZ / EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "SD2TFLITE_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sd2tflite.cli", "generate", str(set_dir), "a red circle",
                           "--steps", "1", "-o", str(out), *extra], capture_output=True, text=True, env=env,
                          preexec_fn=limited)


@pytest.mark.parametrize("limit", [1 << 20, 3 << 20])
def test_a_cache_write_failing_midway_never_kills_generate(limit, tiny_sets, tmp_path):
    set_dir = tiny_sets["fp32"]
    plain = _generate_process(set_dir, tmp_path / "plain.png", tmp_path / "c0", "-q", "--no-weight-cache")
    assert plain.returncode == 0, plain.stderr
    proc = _generate_process(set_dir, tmp_path / "o.png", tmp_path / "c1", limit=limit)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: weight cache file")]
    assert notes and all("without it" in n for n in notes), proc.stderr
    left = list((tmp_path / "c1" / "xnnpack").iterdir())
    assert not [p for p in left if is_temp_name(p.name)]
    from sd2tflite.runtime.weight_cache import problem

    assert all(problem(p) is None for p in left if p.suffix == ".xnnpack")  # what is there is whole


def test_a_foreign_cache_file_is_silent_under_quiet(tiny_sets, tmp_path):
    from sd2tflite.runtime.integrity import file_sha256
    from sd2tflite.runtime.weight_cache import cache_file

    set_dir, cache = tiny_sets["fp32"], tmp_path / "cache"
    first = _generate_process(set_dir, tmp_path / "a.png", cache, "-q")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    folder = cache / "xnnpack"
    decoder, encoder = (cache_file(file_sha256(set_dir / f"{c}.tflite", reuse=True), folder)
                        for c in ("decoder", "text_encoder"))
    shutil.copyfile(encoder, decoder)
    again = _generate_process(set_dir, tmp_path / "b.png", cache, "-q")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
