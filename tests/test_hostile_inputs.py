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


# ---------------------------------------------------------------- non-finite weights, LoRA factors and merges


@pytest.fixture(scope="module")
def v1_diffusers(tmp_path_factory):
    from .test_checkpoint import DATA, derive

    root = tmp_path_factory.mktemp("v1") / "v1-diffusers"
    shutil.copytree(DATA / "v1" / "diffusers", root)
    derive(DATA / "v1" / "diffusers.plan.json.gz", root)
    return root


@pytest.fixture(scope="module")
def keras_build():
    """One Keras model per (component, architecture), loaded again for each case."""
    from sd2tflite.convert.checkpoint.builders import build

    models = {}

    def load(ckpt, component):
        if component not in models:
            models[component] = build(ckpt.architecture, component, 64, 64)
        return ckpt.load(component, *models[component])

    return load


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


NON_FINITE = [np.nan, np.inf, -np.inf]
WHERE = {"first": lambda x: (0,) * x.ndim, "last": lambda x: tuple(d - 1 for d in x.shape),
         "middle": lambda x: tuple(d // 2 for d in x.shape)}


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", list(WHERE))
def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(value, where, v1_diffusers,
                                                                          keras_build, tmp_path):
    from safetensors.numpy import load_file

    from sd2tflite.convert.checkpoint import open_checkpoint
    from sd2tflite.core.errors import WeightsError

    vae = load_file(str(v1_diffusers / "vae" / "diffusion_pytorch_model.safetensors"))
    names = sorted(k for k in vae if k.startswith("decoder.") and vae[k].dtype.kind == "f")
    name = names[len(vae[names[0]]) % len(names)]  # some decoder tensor, not always the first
    vae[name] = vae[name].astype(np.float32)  # a copy; fp16 holds NaN/Inf as well
    vae[name][WHERE[where](vae[name])] = value
    ckpt = open_checkpoint(v1_diffusers, overrides={"vae": _save(tmp_path / "vae.safetensors", vae)})
    with pytest.raises(WeightsError) as e:
        keras_build(ckpt, "decoder")
    message = str(e.value)
    assert "\n" not in message and name in message and "vae.safetensors" in message and "NaN/Inf" in message


_TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _lora(tmp_path: Path, up=1.0, down=1.0, alpha=None, rank=4, name="l.safetensors") -> Path:
    tensors = {f"{_TO_Q}.lora_down.weight": np.full((rank, 32), down, np.float32),
               f"{_TO_Q}.lora_up.weight": np.full((32, rank), up, np.float32)}
    if alpha is not None:
        tensors[f"{_TO_Q}.alpha"] = np.array(alpha, np.float32)
    return _save(tmp_path / name, tensors)


@pytest.mark.parametrize("lora, scale, words", [
    (dict(alpha=np.nan), 1.0, "alpha nan"),
    (dict(alpha=np.inf), 1.0, "alpha inf"),
    (dict(alpha=3e38), 1e3, "not a finite float32"),
    (dict(alpha=4.0), 1e39, "not a finite float32"),
    (dict(rank=0), 1.0, "rank 0"),
    (dict(alpha=np.zeros(0)), 1.0, "not one number"),  # an alpha tensor with no value
    (dict(alpha=[4.0, 8.0]), 1.0, "not one number"),
])
def test_lora_factors_that_are_not_finite_are_refused_at_open(lora, scale, words, v1_diffusers, tmp_path):
    from sd2tflite.convert.checkpoint import open_checkpoint
    from sd2tflite.core.errors import WeightsError

    path = _lora(tmp_path, **lora)
    with pytest.raises(WeightsError) as e:
        open_checkpoint(v1_diffusers, loras=[(path, scale)])
    assert "\n" not in str(e.value) and str(path) in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("lora, scale, words", [
    (dict(up=np.nan), 1.0, "lora_up.weight in l.safetensors (LoRA factor for"),
    (dict(down=-np.inf), 1.0, "lora_down.weight in l.safetensors (LoRA factor for"),
    (dict(up=1e20, down=1e20), 1.0, "after merging"),  # each factor finite, the product is not
    (dict(), 1e38, "after merging"),  # the factor is a float32, the merged weight is not
])
def test_lora_merges_that_are_not_finite_are_refused_naming_the_tensor(lora, scale, words, v1_diffusers,
                                                                      keras_build, tmp_path):
    from sd2tflite.convert.checkpoint import open_checkpoint
    from sd2tflite.core.errors import WeightsError

    ckpt = open_checkpoint(v1_diffusers, loras=[(_lora(tmp_path, **lora), scale)])
    with pytest.raises(WeightsError) as e:
        keras_build(ckpt, "diffusion")
    message = str(e.value)
    assert "\n" not in message and words in message and "attn1.to_q" in message, message


# ---------------------------------------------------------------- safetensors headers that lie


def _raw_safetensors(path: Path, header, data: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HEADERS = {
    "a JSON list": ([1, 2, 3], b"", "JSON list"),
    "a JSON string": ("text", b"", "JSON str"),
    "a JSON number": (7, b"", "JSON int"),
    "not UTF-8": (b'{"a": "\xff"}', b"", "not JSON"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, b"", "not JSON"),
    "metadata a list": ({"__metadata__": [1], "w": _entry()}, bytes(8), "__metadata__"),
    "shape product past int64": ({"w": _entry(shape=(2**40, 2**40))}, bytes(8), "more than the file"),
    "shape product of huge dims": ({"w": _entry(shape=(10**30,))}, bytes(8), "more than the file"),
    "negative dimension": ({"w": _entry(shape=(-2,), offsets=(0, 0))}, b"", "non-negative"),
    "float dimension": ({"w": _entry(shape=(2.5,))}, bytes(8), "non-negative"),
    "F8_E4M3": ({"w": _entry("F8_E4M3", (8,))}, bytes(8), "8-bit float"),
    "F8_E5M2": ({"w": _entry("F8_E5M2", (8,))}, bytes(8), "8-bit float"),
    "unknown dtype": ({"w": _entry("C64")}, bytes(8), "dtype C64"),
    "offsets overlap": ({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, bytes(12), "overlaps"),
    "offsets leave a gap": ({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(16, 24))}, bytes(24), "gap"),
    "offsets past the end": ({"w": _entry(offsets=(0, 8))}, bytes(4), "truncated"),
    "bytes after the data": ({"w": _entry()}, bytes(64), "corrupt"),
    "offsets not integers": ({"w": _entry(offsets=("0", "8"))}, bytes(8), "corrupt header"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_a_safetensors_header_that_lies_is_one_line_naming_the_file(case, tmp_path):
    from sd2tflite.convert.checkpoint.reader import SafetensorsFile
    from sd2tflite.core.errors import WeightsError

    header, data, words = HEADERS[case]
    path = _raw_safetensors(tmp_path / "m.safetensors", header, data)
    with pytest.raises(WeightsError) as e:
        f = SafetensorsFile(path)
        [f.get(k) for k in f.keys()]  # nothing that passes the header check may fail in the library
    assert "\n" not in str(e.value) and str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_the_cli_names_a_lying_header_in_one_line(tmp_path):
    path = _raw_safetensors(tmp_path / "m.safetensors", [1, 2])
    result = run(["convert", "--weights", str(path), "-o", str(tmp_path / "out"), "--quant", "fp32"])
    assert_one_line_error(result, 1, "m.safetensors", "JSON list")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- diffusers folders: configs and indexes


def _unet_folder(tmp_path: Path, index=None, config=None) -> Path:
    folder = tmp_path / "unet"
    folder.mkdir()
    if index is not None:
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_bytes(
            index if isinstance(index, bytes) else json.dumps(index).encode())
    if config is not None:
        (folder / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    return folder


OUTSIDE = ["../outside.safetensors", "../../../outside/x.safetensors", "/etc/passwd", "sub/../../x.safetensors",
           "..", "", "a\\..\\..\\x.safetensors"]


@pytest.mark.parametrize("shard", OUTSIDE)
def test_an_index_naming_a_shard_outside_its_folder_is_refused_before_opening(shard, tmp_path):
    from sd2tflite.convert.checkpoint.layouts import component_files
    from sd2tflite.core.errors import WeightsError

    outside = tmp_path / "outside.safetensors"
    _raw_safetensors(outside, {"w": _entry()}, bytes(8))
    folder = _unet_folder(tmp_path, index={"weight_map": {"w": shard}})
    with pytest.raises(WeightsError) as e:
        component_files(folder, "unet")
    assert "\n" not in str(e.value) and "not a file name inside" in str(e.value), str(e.value)


def test_a_shard_that_is_a_link_out_of_the_folder_is_refused(tmp_path):
    from sd2tflite.convert.checkpoint.layouts import component_files
    from sd2tflite.core.errors import WeightsError

    outside = _raw_safetensors(tmp_path / "outside.safetensors", {"w": _entry()}, bytes(8))
    folder = _unet_folder(tmp_path, index={"weight_map": {"w": "shard.safetensors"}})
    (folder / "shard.safetensors").symlink_to(outside)
    with pytest.raises(WeightsError, match="not a file name inside"):
        component_files(folder, "unet")


@pytest.mark.parametrize("index, words", [
    ({"weight_map": ["a.safetensors"]}, "weight_map is not an object"),
    ({"weight_map": {"w": 3}}, "weight_map is not an object"),
    ({"no_weight_map": {}}, "weight_map is not an object"),
    ([{"weight_map": {}}], "JSON list"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_an_index_that_is_not_one_is_one_line(index, words, tmp_path):
    from sd2tflite.convert.checkpoint.layouts import component_files
    from sd2tflite.core.errors import WeightsError

    folder = _unet_folder(tmp_path, index=index)
    with pytest.raises(WeightsError) as e:
        component_files(folder, "unet")
    assert "\n" not in str(e.value) and words in str(e.value) and "index.json" in str(e.value), str(e.value)


@pytest.mark.parametrize("config, words", [
    ([1, 2], "JSON list"), ("a string", "JSON str"), (b"\xff\xfe\x00{", "not UTF-8"),
    (b"{" * 100_000, "not valid JSON"), (b'{"a": 1', "not valid JSON"),
])
def test_a_config_that_is_not_an_object_is_one_line(config, words, tmp_path):
    from sd2tflite.convert.checkpoint.layouts import _read_json
    from sd2tflite.core.errors import WeightsError

    folder = _unet_folder(tmp_path, config=config)
    with pytest.raises(WeightsError) as e:
        _read_json(folder / "config.json")
    assert "\n" not in str(e.value) and words in str(e.value) and "config.json" in str(e.value), str(e.value)


# ---------------------------------------------------------------- hf:// revisions and offline mode


@pytest.mark.parametrize("revision", ["../../..", "../../../../tmp/x", "main/../../x", "/etc", ".hidden",
                                      "a//b", "x.lock", "main/", "a@{1}", "..", "refs/../../x"])
def test_a_revision_that_is_a_path_is_refused_before_any_download(revision):
    from sd2tflite.core.errors import UsageError
    from sd2tflite.runtime.hub import parse_hf_uri

    with pytest.raises(UsageError, match="is not a branch, tag or commit"):
        parse_hf_uri(f"hf://owner/repo@{revision}")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/3", "3f2a9c1", "a" * 40, "feature/x_y-z"])
def test_real_revisions_pass(revision):
    from sd2tflite.runtime.hub import parse_hf_uri

    assert parse_hf_uri(f"hf://owner/repo@{revision}") == ("owner/repo", revision)


def test_a_snapshot_outside_the_hub_cache_is_refused(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as constants

    from sd2tflite.core.errors import HubError
    from sd2tflite.runtime import hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path / "elsewhere"))
    with pytest.raises(HubError, match="outside the Hugging Face cache"):
        hub.resolve_model_dir("hf://owner/repo@main")


def test_offline_and_uncached_says_so_in_one_whole_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "sd2tflite.cli", "generate", "hf://nobody/never-cached",
                           "x", "-o", str(tmp_path / "o.png"), "-q"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "offline mode is on" in lines[0] and "try again later" not in lines[0]
    assert lines[0].endswith("or pass a local folder")  # whole, not cut mid-sentence


# ---------------------------------------------------------------- configs the architecture is read from


@pytest.mark.parametrize("heads", [0, -1, [-1, 8, 8, 8], [8, 8, 0, 8], "8", 8.5, True, [], {"a": 1}])
def test_a_unet_config_with_impossible_heads_is_one_line(heads):
    from sd2tflite.convert.checkpoint.architecture import _config_heads
    from sd2tflite.core.errors import WeightsError

    with pytest.raises(WeightsError) as e:
        _config_heads({"attention_head_dim": heads}, 4)
    assert "\n" not in str(e.value) and "attention_head_dim" in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize("heads", [0, -8, "12", 10**9, 1.5])
def test_a_text_config_with_impossible_heads_is_one_line(heads):
    from sd2tflite.convert.checkpoint.architecture import _text_heads
    from sd2tflite.core.errors import WeightsError

    with pytest.raises(WeightsError, match="num_attention_heads"):
        _text_heads({"num_attention_heads": heads}, 768)


# ---------------------------------------------------------------- manifests beyond any set


MANIFESTS = {
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    "nested objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
    "a JSON list": (b"[]", "JSON list"),
    "a number": (b"12", "JSON int"),
    "not UTF-8": (b'{"\xff": 1}', "not valid JSON"),
    "too large": (b" " * (17 << 20) + b"{}", "more than a manifest"),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_a_manifest_that_is_not_one_is_one_line_in_every_command(case, tmp_path):
    data, words = MANIFESTS[case]
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "manifest.json").write_bytes(data)
    assert_one_line_error(run(["generate", str(set_dir), "x", "-o", str(tmp_path / "o.png"), "-q"]), 1, words)
    assert_one_line_error(run(["bench", str(set_dir), "-q"]), 1, words)
    assert_one_line_error(run(["push-hub", str(set_dir), "--repo-id", "someone/x", "--dry-run"]), 1, words)
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- limits before allocating


@pytest.mark.parametrize("flag, value", [("--steps", 1099511627776), ("--steps", 1001), ("--repeats", 10**12),
                                         ("--warmup", 2**63), ("--image-repeats", 10**7)])
def test_bench_counts_past_their_limit_are_refused_before_work(flag, value, fp32_set):
    assert_one_line_error(run(["bench", str(fp32_set), flag, str(value), "-q"]), 2, flag, "at most")


@pytest.mark.parametrize("steps", [1099511627776, 10**6, 1001])
def test_generate_steps_past_the_schedule_are_refused_before_work(steps, fp32_set, tmp_path):
    result = run(["generate", str(fp32_set), "x", "--steps", str(steps), "-o", str(tmp_path / "o.png"), "-q"])
    assert result.exit_code == 2 and "--steps" in result.stderr, result.stderr
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- names the OS refuses


@pytest.mark.parametrize("where", ["output", "set", "noise", "nested output"])
def test_a_name_over_the_os_limit_is_one_line(where, fp32_set, tmp_path):
    long = "n" * 300
    args = {"output": [str(fp32_set), "-o", str(tmp_path / f"{long}.png")],
            "set": [str(tmp_path / long), "-o", str(tmp_path / "o.png")],
            "noise": [str(fp32_set), "-o", str(tmp_path / "o.png"), "--noise", str(tmp_path / f"{long}.npy")],
            "nested output": [str(fp32_set), "-o", str(tmp_path / long / "o.png")]}[where]
    result = run(["generate", args[0], "x", "--steps", "1", *args[1:], "-q"])
    line = assert_one_line_error(result, result.exit_code, "too long")
    assert result.exit_code in (1, 2) and "unexpected" not in line


# ---------------------------------------------------------------- SIGTERM is Ctrl-C


def test_sigterm_during_generate_cleans_up_like_ctrl_c(tiny_sets, tmp_path):
    import signal
    import time

    out = tmp_path / "o.png"
    env = {**os.environ, "SD2TFLITE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "sd2tflite.cli", "generate", str(tiny_sets["fp32"]), "x",
                             "--steps", "1000", "-o", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "cache" / "xnnpack").is_dir():
        time.sleep(0.1)
    time.sleep(3)  # into the denoising loop
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()
    left = [p for p in tmp_path.rglob("*") if is_temp_name(p.name)]
    assert not left, left


def _children_of(pid: int) -> set[int]:
    """Processes whose parent is `pid` (convert's spawned export/convert workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_during_convert_cleans_up_and_the_plain_rerun_resumes(tmp_path, export_cache):
    """SIGTERM (only the parent gets it, unlike a terminal's Ctrl-C) once the first file is in
    place: exit 143, no lock, no work folder, no temp file, no worker left running; the same
    command then finishes the set, keeping the file already converted."""
    import signal
    import time

    from .conftest import IMG

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sd2tflite.cli", "convert", "--model", "tiny", "--img-height", str(IMG),
           "--img-width", str(IMG), "--components", "decoder,image_encoder", "--quant", "fp32",
           "--export-cache", str(export_cache), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("*.tflite")):
        workers |= _children_of(proc.pid)
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion ended before a file was written: nothing to interrupt"
    first = sorted(p.name for p in out.glob("*.tflite"))
    workers |= _children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    time.sleep(1)
    assert not [w for w in workers if _alive(w)], "a conversion worker outlived SIGTERM"
    left = sorted(os.listdir(out))
    assert ".sd2tflite-lock" not in left and not [n for n in left if n.startswith(".sd2tflite-work-")], left
    assert not [n for n in left if is_temp_name(n)], left
    assert "manifest.json" not in left  # the set is not claimed complete

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(out)) == ["decoder.tflite", "image_encoder.tflite", "manifest.json"]
    assert set(first) <= {"decoder.tflite", "image_encoder.tflite"}


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def test_sigterm_during_bench_stops_its_workers_and_their_cache_builds(tiny_sets, tmp_path):
    """SIGTERM to bench only (not its process group) while a worker builds a weight-cache file in a
    process of its own: exit 143 in one line, no report, no worker or build left running, no temp
    file, and every cache file left is a whole, recorded one."""
    import signal
    import time

    from sd2tflite.runtime.weight_cache import problem

    cache, report = tmp_path / "cache", tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, "-m", "sd2tflite.cli", "bench", str(tiny_sets["fp32"]), "--steps", "50",
                             "--repeats", "50", "--image-repeats", "5", "--json", str(report), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SD2TFLITE_CACHE": str(cache)})
    seen: set[int] = set()
    building = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not building:
        workers = _children_of(proc.pid)
        seen |= workers
        building = any(_children_of(w) for w in workers)  # a worker's own child: a cache build
        time.sleep(0.02)
    assert building, "no weight-cache build was seen: nothing to interrupt"
    seen |= _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 143 and len(lines) == 1 and "interrupted" in lines[0], stderr
    time.sleep(1)
    assert not [p for p in seen if _alive(p)], "a bench worker or cache build outlived SIGTERM"
    assert not report.exists()
    left = list((cache / "xnnpack").iterdir()) if (cache / "xnnpack").is_dir() else []
    assert not [p for p in left if is_temp_name(p.name)], left
    assert all(problem(p) is None for p in left if p.suffix == ".xnnpack")


def test_sigterm_during_push_hub_ends_cleanly_and_the_rerun_finishes(fp32_set, tmp_path):
    """SIGTERM while a file is being uploaded (the local fake Hub holds the upload open): exit 143 in
    one line, the branch did not move, the set is unchanged, nothing written; the same command
    then lands the one commit."""
    import hashlib
    import signal
    import threading
    from http.server import ThreadingHTTPServer

    from .test_hub import TOKEN, FakeHub, Handler

    hub = FakeHub()
    hub.uploading, hub.release = threading.Event(), threading.Event()

    class Stalling(Handler):
        def do_PUT(self):
            if self.path.startswith("/lfs-upload/") and not self.hub.release.is_set():
                self.hub.uploading.set()
                self.hub.release.wait(120)
            self._handle()

    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (Stalling,), {"hub": hub}))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "sd2tflite.cli", "push-hub", str(fp32_set), "--repo-id", "someone/x", "--token",
           TOKEN, "-q"]

    def snapshot():
        return {str(p.relative_to(fp32_set)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(fp32_set.rglob("*")) if p.is_file()}

    before = snapshot()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        assert hub.uploading.wait(120), "no upload started: nothing to interrupt"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        hub.release.set()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 143 and len(lines) == 1 and "interrupted" in lines[0], stderr
        assert TOKEN not in stderr
        assert hub.commits == [] and set(hub.tree("someone/x")) == {".gitattributes"}  # main did not move
        assert snapshot() == before

        again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(hub.commits) == 1
        tree = hub.tree("someone/x")
        assert all(hub.content(tree[name]) == (fp32_set / name).read_bytes() for name in before)
        assert snapshot() == before
    finally:
        hub.release.set()
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- the records generate reads from the manifest


RECORDS = {
    "scheduler steps 1e12": ("scheduler", "steps", 10**12, "scheduler.steps"),
    "scheduler steps 0": ("scheduler", "steps", 0, "scheduler.steps"),
    "scheduler steps past the schedule": ("scheduler", "steps", 1001, "scheduler.steps"),
    "scheduler steps a string": ("scheduler", "steps", "25", "scheduler.steps"),
    "scheduler guidance NaN": ("scheduler", "guidance", float("nan"), "scheduler.guidance"),
    "scheduler guidance 1e308": ("scheduler", "guidance", 1e308, "scheduler.guidance"),
    "betas NaN": ("scheduler", "beta_start", float("nan"), "scheduler.beta_start"),
    "betas Infinity": ("scheduler", "beta_end", float("inf"), "scheduler.beta_end"),
    "betas a string": ("scheduler", "beta_start", "0.1", "scheduler.beta_start"),
    "1e12 training timesteps": ("scheduler", "num_train_timesteps", 10**12, "scheduler.num_train_timesteps"),
    "fractional training timesteps": ("scheduler", "num_train_timesteps", 1000.5, "scheduler.num_train_timesteps"),
    "training timesteps true": ("scheduler", "num_train_timesteps", True, "scheduler.num_train_timesteps"),
    "steps offset 1e9": ("scheduler", "steps_offset", 10**9, "scheduler.steps_offset"),
    "steps offset -5": ("scheduler", "steps_offset", -5, "scheduler.steps_offset"),
    "original steps 1e12": ("scheduler", "original_inference_steps", 10**12, "scheduler.original_inference_steps"),
    "eta NaN": ("scheduler", "eta", float("nan"), "scheduler.eta"),
    "clip range NaN": ("scheduler", "clip_sample_range", float("nan"), "scheduler.clip_sample_range"),
    "timestep scaling Infinity": ("scheduler", "timestep_scaling", float("inf"), "scheduler.timestep_scaling"),
    "sampler a path": ("scheduler", "sampler", "../../x", "scheduler.sampler"),
    "sampler a list": ("scheduler", "sampler", ["ddim"], "scheduler.sampler"),
    "spacing a list": ("scheduler", "timestep_spacing", ["x"], "scheduler.timestep_spacing"),
    "beta schedule an object": ("scheduler", "beta_schedule", {"a": 1}, "scheduler.beta_schedule"),
    "clip_sample a string": ("scheduler", "clip_sample", "no", "scheduler.clip_sample"),
    "scheduler a list": ("scheduler", None, [1, 2], "manifest.scheduler"),
    "pad id -1": ("tokenizer", "pad_id", -1, "tokenizer.pad_id"),
    "pad id past the vocabulary": ("tokenizer", "pad_id", 49408, "tokenizer.pad_id"),
    "pad id 1e12": ("tokenizer", "pad_id", 10**12, "tokenizer.pad_id"),
    "pad id a string": ("tokenizer", "pad_id", "x", "tokenizer.pad_id"),
    "pad id a float": ("tokenizer", "pad_id", 3.5, "tokenizer.pad_id"),
    "pad id true": ("tokenizer", "pad_id", True, "tokenizer.pad_id"),
    "tokenizer a list": ("tokenizer", None, [1], "manifest.tokenizer"),
    "pixels unknown": (None, "pixels", "floor", "manifest.pixels"),
    "pixels a number": (None, "pixels", 3, "manifest.pixels"),
}


def _edit_manifest(set_dir: Path, edit) -> None:
    path = set_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_manifest_record_generate_reads_with_a_wrong_type_or_absurd_value_is_one_line(case, fp32_set, tmp_path):
    record, key, value, words = RECORDS[case]

    def edit(data):
        if record is None:
            data[key] = value
        elif key is None:
            data[record] = value
        else:
            data[record][key] = value

    _edit_manifest(fp32_set, edit)
    out = tmp_path / "o.png"
    line = assert_one_line_error(run(["generate", str(fp32_set), "x", "-o", str(out), "-q", "--no-weight-cache"]),
                                 1, words, "manifest")
    assert "unexpected" not in line and "--" not in line.split(":", 1)[1], line  # names the record, not an option
    assert not out.exists()


# ---------------------------------------------------------------- sd2tflite compile: records, files and targets


def _compiled_record(data: dict, **changes) -> None:
    decoder = next(a for a in data["artifacts"] if a["component"] == "decoder")
    record = {"target": "qualcomm:SM8650", "source": decoder["path"], "source_sha256": decoder["sha256"],
              "path": "npu/qualcomm-sm8650/decoder.tflite", "sha256": decoder["sha256"], "bytes": decoder["bytes"],
              "optimization_level": "O2", "partition": {}}
    data["compiled"] = [{**record, **changes}]


COMPILED_RECORDS = {
    "path leaving the set": ({"path": "npu/../../x.tflite"}, "points outside"),
    "absolute path": ({"path": "/etc/passwd"}, "compiled[0].path"),
    "path naming a file of the set": ({"path": "decoder.tflite"}, "not under npu/"),
    "path naming another set's file": ({"path": "../other-set/decoder.tflite"}, "compiled[0].path"),
    "target with traversal": ({"target": "../../etc"}, "not a VENDOR:SOC target"),
    "target 10 kB long": ({"target": "qualcomm:" + "S" * 10_000}, "not a VENDOR:SOC target"),
    "target not a string": ({"target": 3}, "compiled[0].target"),
    "source another set's file": ({"source": "../other-set/decoder.tflite"}, "not a file of this set"),
    "bytes a string": ({"bytes": "12"}, "compiled[0].bytes"),
    "partition a list": ({"partition": [1]}, "compiled[0].partition"),
}


@pytest.mark.parametrize("case", list(COMPILED_RECORDS))
def test_a_tampered_compiled_record_is_one_line_in_every_command(case, fp32_set, tmp_path):
    changes, words = COMPILED_RECORDS[case]
    npu = fp32_set / "npu" / "qualcomm-sm8650"
    npu.mkdir(parents=True)
    shutil.copyfile(fp32_set / "decoder.tflite", npu / "decoder.tflite")
    _edit_manifest(fp32_set, lambda data: _compiled_record(data, **changes))
    litertjs = Path(__file__).parent / "browser"
    for args, code in [(["generate", str(fp32_set), "x", "-o", str(tmp_path / "o.png"), "-q"], 1),
                       (["push-hub", str(fp32_set), "--repo-id", "someone/x", "--dry-run"], 1),
                       (["compile", str(fp32_set), "--target", "qualcomm:SM8650", "-q"], 1),
                       (["serve", str(fp32_set), "--litertjs", str(litertjs), "--port", "0"], 1)]:
        line = assert_one_line_error(run(args), code, words)
        assert len(line) < 400, line
    assert not (tmp_path / "o.png").exists()
    assert sorted(p.name for p in npu.iterdir()) == ["decoder.tflite"]  # compile wrote nothing


@pytest.mark.parametrize("target", ["../../etc:x", "qualcomm:../../x", "qualcomm:SM8650/../../x", "q" * 10_000,
                                    "qualcomm:" + "S" * 10_000, "qualcomm:SM8650\0", "qualcomm"])
def test_a_compile_target_with_traversal_or_10_kb_is_one_short_line_and_writes_nothing(target, fp32_set):
    before = (fp32_set / "manifest.json").read_bytes()
    line = assert_one_line_error(run(["compile", str(fp32_set), "--target", target, "-q"]), 2)
    assert ("--target" in line or "SoC" in line) and "unexpected" not in line and len(line) < 400, line
    assert not (fp32_set / "npu").exists() and (fp32_set / "manifest.json").read_bytes() == before


def test_a_compiled_file_altered_after_compile_is_refused_then_compiled_again(fp32_set, tmp_path):
    from sd2tflite.device.plugin import DeviceSdkError, check_sdk
    from sd2tflite.device.targets import Target

    try:
        check_sdk(Target("qualcomm", "SM8650"))
    except DeviceSdkError as exc:
        if os.environ.get("SD2TFLITE_REQUIRE_NPU"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    args = ["compile", str(fp32_set), "--target", "qualcomm:SM8650", "--components", "decoder", "--opt-level", "O2",
            "-q"]
    assert run(args).exit_code == 0
    compiled = fp32_set / "npu" / "qualcomm-sm8650" / "decoder.tflite"
    good = compiled.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x5A
    compiled.write_bytes(bytes(data))
    for refused in (["generate", str(fp32_set), "x", "-o", str(tmp_path / "o.png"), "-q"],
                    ["push-hub", str(fp32_set), "--repo-id", "someone/x", "--dry-run"]):
        assert_one_line_error(run(refused), 1, "npu/qualcomm-sm8650/decoder.tflite", "compile again")
    again = run(args)
    assert again.exit_code == 0 and "(reused" not in again.output, again.output
    # Compiled again (QNN's output is not byte-for-byte reproducible: a CI run differed in one byte),
    # and the new file is the one the record vouches for: generate's integrity check passes below.
    assert compiled.read_bytes() != bytes(data) and len(compiled.read_bytes()) > len(good) // 2
    assert run(["generate", str(fp32_set), "x", "--steps", "1", "-o", str(tmp_path / "o.png"), "-q"]).exit_code == 0


# ---------------------------------------------------------------- sd2tflite serve: only its assets and the set's files


def _litertjs_or_skip() -> Path:
    from sd2tflite.core.errors import SD2TFLiteError
    from sd2tflite.serve.browser import find_litertjs

    where = Path(os.environ.get("SD2TFLITE_LITERTJS") or Path(__file__).parent / "browser")
    try:
        find_litertjs(where)
    except SD2TFLiteError as exc:
        if os.environ.get("SD2TFLITE_REQUIRE_BROWSER"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    return where


def _http(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest(method, path, skip_accept_encoding=True)
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Length", str(len(body)))
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    if body is not None:
        connection.send(body)
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, data


TRAVERSALS = ["/../../etc/passwd", "/assets/../../../../etc/passwd", "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd", "/set/../manifest.json", "/set/%2e%2e/secret.txt",
              "/set/../secret.txt", "/set/manifest.json", "/assets/%00", "/assets/" + "a" * 10_000,
              "/litertjs/core/dist/../../../../../etc/passwd", "/litertjs/core/dist/%2e%2e%2fpackage.json",
              "//etc/passwd", "/assets//etc/passwd", "/set/./decoder.tflite", "/SET/decoder.tflite"]


def test_serve_answers_only_its_assets_and_the_sets_files(fp32_set, tmp_path):
    from sd2tflite.serve.app import ServeRequest, make_server

    litertjs = _litertjs_or_skip()
    secret = fp32_set.parent / "secret.txt"  # beside the set: must never be served
    secret.write_text("SECRET-CANARY")
    server = make_server(ServeRequest(fp32_set, port=0, litertjs=litertjs))
    with server:
        for path in TRAVERSALS:
            status, data = _http(server.url, "GET", path)
            assert status == 404, (path, status, data[:200])
            assert b"SECRET-CANARY" not in data and b"root:" not in data and b'"version"' not in data, path
            assert json.loads(data)["error"].startswith("no such address")
        status, data = _http(server.url, "GET", "/set/decoder.tflite")
        assert status == 200 and data == (fp32_set / "decoder.tflite").read_bytes()

        start = "/api/start"
        status, data = _http(server.url, "POST", start, json.dumps({"prompt": "a " * 50_000}).encode())
        assert status == 400 and "shorten it" in json.loads(data)["error"]  # a 100 kB prompt
        for body, words in [(b"[1, 2]", "not a JSON object"), (b"[" * 100_000, "not JSON"),
                            (json.dumps({"steps": 10**12}).encode(), "--steps"),
                            (json.dumps({"guidance": "nan"}).encode(), "guidance")]:
            status, data = _http(server.url, "POST", start, body)
            assert status == 400 and words in json.loads(data)["error"], (body[:40], data)
        for length in (str(10**12), "-5", "x"):  # refused before anything is read or allocated
            status, data = _http(server.url, "POST", start, b"{}", {"Content-Length": length})
            assert status == 413 and "Content-Length" in json.loads(data)["error"], data
        status, data = _http(server.url, "POST", "/api/start", json.dumps({"prompt": "x", "steps": 1}).encode())
        run_id = json.loads(data)["run_id"]
        status, data = _http(server.url, "POST", f"/api/step?run={run_id}", b"\0" * 10)
        assert status == 400 and "float32 values" in json.loads(data)["error"]
        status, _ = _http(server.url, "GET", "/api/config")
        assert status == 200  # still serving


@pytest.mark.parametrize("how", ["manifest path into another set", "link to another set's file",
                                 "manifest path absolute"])
def test_serve_refuses_a_set_whose_files_leave_its_folder(how, fp32_set, tmp_path):
    other = Path(shutil.copytree(fp32_set, tmp_path / "other-set"))
    if how == "link to another set's file":
        (fp32_set / "decoder.tflite").unlink()
        (fp32_set / "decoder.tflite").symlink_to(other / "decoder.tflite")
    else:
        path = "../other-set/decoder.tflite" if how == "manifest path into another set" else \
            str(other / "decoder.tflite")

        def edit(data):
            next(a for a in data["artifacts"] if a["component"] == "decoder")["path"] = path

        _edit_manifest(fp32_set, edit)
    litertjs = Path(__file__).parent / "browser"
    assert_one_line_error(run(["serve", str(fp32_set), "--litertjs", str(litertjs), "--port", "0"]), 1,
                          "decoder.tflite", "outside")


# ---------------------------------------------------------------- bench says what happened to the weight cache


def test_bench_says_a_weight_cache_note_once(tiny_sets, tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "sd2tflite.cli", "bench", str(tiny_sets["fp32"]), "--steps", "1",
                           "--repeats", "1", "--warmup", "0", "--image-repeats", "1", "--json",
                           str(tmp_path / "b.json")], capture_output=True, text=True,
                          env={**os.environ, "SD2TFLITE_CACHE": str(tmp_path / "file" / "cache")})
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "note: weight cache" in line]
    assert len(notes) == 1, proc.stderr  # four components in two workers: said once
    assert "weight cache folder" in notes[0] and "running without it" in notes[0]
    assert json.loads((tmp_path / "b.json").read_text())["cases"]
