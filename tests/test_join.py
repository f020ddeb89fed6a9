"""The UNet converted in parts and delivered as one file (convert/join.py)."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import seeded_inputs, tiny_request


def _noise_preds(set_dir, samples):
    from sd2tflite.runtime.litert import load_component

    unet = load_component(set_dir, "diffusion")
    return [unet(**s)["noise_pred"] for s in samples]


def test_joined_unet_computes_what_its_parts_compute(tmp_path, tiny_dims, export_cache):
    from sd2tflite.convert.orchestrate import convert

    out = tmp_path / "set"

    def run(join_unet):
        return convert(tiny_request(out, "dynamic", components="diffusion", unet_parts=2, join_unet=join_unet,
                                    export_cache=str(export_cache)))

    parted = run(False)
    parts = parted.manifest.artifacts
    samples = seeded_inputs("diffusion", tiny_dims)
    chained = _noise_preds(out, samples)

    # Joined from the parts already on disk: nothing is converted again.
    result = run(True)
    assert result.built == ["diffusion.tflite"]
    assert sorted(result.reused) == ["diffusion_part0.tflite", "diffusion_part1.tflite"]
    [unet] = result.manifest.artifacts
    assert (unet.path, unet.part, unet.num_parts) == ("diffusion.tflite", 0, 1)
    assert unet.joined_from == [a.build_key for a in parts]
    assert all(producer is None for producer in unet.wiring.values())
    assert [s.name for s in unet.inputs] == ["latent", "timestep_embedding", "context"]
    # The parts are gone; the file holds every part's weights and operators.
    assert sorted(p.name for p in out.iterdir()) == ["diffusion.tflite", "manifest.json"]
    assert unet.params == sum(a.params for a in parts)
    assert unet.op_stats["ops"] == sum(a.op_stats["ops"] for a in parts)
    assert abs(unet.bytes - sum(a.bytes for a in parts)) < 0.01 * unet.bytes
    assert result.manifest.split["joined"]["max_abs_diff_vs_parts"] < 1e-5
    assert result.manifest.split["joined"]["peak_rss_bytes"] > 0
    assert _misaligned_buffers((out / "diffusion.tflite").read_bytes()) == 0
    for joined, expected in zip(_noise_preds(out, samples), chained):
        assert np.max(np.abs(joined - expected)) < 1e-5 * max(1.0, float(np.max(np.abs(expected))))

    # A re-run reuses the joined file.
    rerun = run(True)
    assert rerun.built == [] and rerun.reused == ["diffusion.tflite"]
    assert rerun.manifest.artifacts[0].sha256 == unet.sha256
    assert rerun.manifest.split["joined"] == result.manifest.split["joined"]  # the check's figures kept

    # Parts asked for (--unet-parts without --join-unet): the same cuts as the joined file's, so the
    # parts are exported and converted again, and the joined file goes.
    again = run(None)
    assert sorted(again.built) == ["diffusion_part0.tflite", "diffusion_part1.tflite"]
    assert [a.path for a in again.manifest.artifacts] == ["diffusion_part0.tflite", "diffusion_part1.tflite"]
    assert sorted(p.name for p in out.iterdir()) == ["diffusion_part0.tflite", "diffusion_part1.tflite",
                                                     "manifest.json"]


def test_a_run_plans_once_exports_once_and_reads_the_earlier_manifest_once(tmp_path, export_cache, monkeypatch):
    """The plan is one value: a run given one follows it without planning again, a run without
    one plans once; the export runs once even when the earlier set held the UNet joined and this
    run delivers it in parts; the earlier manifest is opened once per run."""
    from sd2tflite.convert import weights
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.convert.plan import describe_plan, plan_conversion

    out = tmp_path / "set"
    calls = {"build_for_plan": [], "build_with_weights": []}
    for name in calls:  # counts the calls of the public builders, whatever builds behind them
        monkeypatch.setattr(weights, name, _counting(calls[name], getattr(weights, name)))

    def request(join_unet):
        return tiny_request(out, "dynamic", components="diffusion", unet_parts=2, join_unet=join_unet,
                            export_cache=str(export_cache))

    plan = plan_conversion(request(True))
    assert "joined into one file, diffusion.tflite" in describe_plan(plan)  # what --dry-run prints
    calls["build_for_plan"].clear()
    joined = convert(request(True), plan=plan)
    assert calls["build_for_plan"] == []  # the run followed the plan it was given
    assert [a.path for a in joined.manifest.artifacts] == [plan.joined.file_name]
    assert {k: v for k, v in joined.manifest.split.items() if k != "joined"} == plan.split_record()
    assert joined.manifest.split["joined"]["file"] == plan.joined.file_name

    for name in calls:
        calls[name].clear()
    parts_asked = request(None)  # (checking the request's output folder reads the manifest too)
    with _opened(out / "manifest.json") as opened:
        parted = convert(parts_asked)  # parts asked for: the joined file's parts are exported again
    assert calls == {"build_for_plan": ["diffusion"], "build_with_weights": ["diffusion"]}
    assert opened == [1]  # the earlier manifest, read once (the new one is written under a temp name)
    assert sorted(parted.built) == ["diffusion_part0.tflite", "diffusion_part1.tflite"]
    assert parted.manifest.split == plan_conversion(request(None)).split_record()


def _counting(calls: list, build):
    def counted(family, component, *args):
        calls.append(component)
        return build(family, component, *args)
    return counted


_WATCH: dict = {"installed": False, "path": None, "count": None}


def _count_opens(event, args):
    if event == "open" and _WATCH["path"] and isinstance(args[0], (str, os.PathLike)):
        if os.path.realpath(args[0]) == _WATCH["path"]:
            _WATCH["count"][0] += 1


@contextlib.contextmanager
def _opened(path):
    """Counts the opens of `path` in this process while the block runs, through Python's audit
    events: every reader counts, whichever module it sits in."""
    if not _WATCH["installed"]:
        sys.addaudithook(_count_opens)  # a hook stays for the process: installed once, idle outside blocks
        _WATCH["installed"] = True
    count = [0]
    _WATCH.update(path=os.path.realpath(path), count=count)
    try:
        yield count
    finally:
        _WATCH.update(path=None, count=None)


def test_fp32_joined_unet_matches_keras(tmp_path, keras_models, tiny_dims, export_cache):
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.metrics import parity

    out = tmp_path / "joined"
    convert(tiny_request(out, components="diffusion", unet_parts=3, join_unet=True, export_cache=str(export_cache)))
    samples = seeded_inputs("diffusion", tiny_dims)
    for sample, got in zip(samples, _noise_preds(out, samples)):
        expected = np.asarray(keras_models["diffusion"]([sample["latent"], sample["timestep_embedding"],
                                                         sample["context"]]))
        figures = parity(expected, got)
        assert figures.psnr_db > 60 and figures.max_abs < 1e-3, figures


def test_int8_joined_unet_keeps_its_integer_and_float_operators(tmp_path, export_cache):
    """int8, the precision whose full-size UNet is joined by default (5 calibrated parts)."""
    from sd2tflite.convert.orchestrate import convert

    result = convert(tiny_request(tmp_path / "set", "int8", components="diffusion", unet_parts=2,
                                  join_unet=True, export_cache=str(export_cache)))
    [unet] = result.manifest.artifacts
    assert result.manifest.split["joined"]["max_abs_diff_vs_parts"] < 1e-5
    stats = unet.op_stats
    assert stats["quantized_ops"] > 0.5 * stats["ops"]
    # Attention stays float in every part (the int8 recipe's float_ops), and the record says so.
    assert stats["float_ops"]["BATCH_MATMUL"] > 0 and stats["float_ops"]["SOFTMAX"] > 0
    assert len(stats["kept_float_per_part"]) == 2


def _misaligned_buffers(data: bytes) -> int:
    """Weight buffers not on a 16-byte boundary of the file (the converter aligns them)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    start = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    buffers = [model.Buffers(i) for i in range(model.BuffersLength())]
    return sum((b.DataAsNumpy().__array_interface__["data"][0] - start) % 16 != 0
               for b in buffers if b.DataLength() > 0)


def _parts(n: int, bytes_each: int):
    from sd2tflite.convert.plan import PlannedArtifact

    return [PlannedArtifact("diffusion", i, n, f"diffusion_part{i}.tflite", (), (), {}, params=bytes_each,
                            estimated_bytes=bytes_each, build_key=f"k{i}", export_key="") for i in range(n)]


@pytest.mark.parametrize("join_unet, unet_parts, part_bytes, expected", [
    (None, None, 400 << 20, True),     # cut for the memory budget only: joined
    (None, 2, 400 << 20, False),       # parts the user asked for stay parts
    (None, None, 800 << 20, False),    # one file would pass --max-part-bytes
    (True, 2, 400 << 20, True),
    (False, None, 400 << 20, False),
])
def test_when_the_unet_is_joined(tmp_path, join_unet, unet_parts, part_bytes, expected):
    from sd2tflite.convert.plan import joins_unet

    request = replace(tiny_request(tmp_path / "out", "dynamic"), join_unet=join_unet, unet_parts=unet_parts,
                      max_part_bytes=1400 << 20)
    assert joins_unet(request, _parts(2, part_bytes)) is expected
    assert joins_unet(request, _parts(1, part_bytes)) is False


def test_join_that_cannot_fit_is_a_usage_error(tmp_path):
    from sd2tflite.convert.plan import joins_unet
    from sd2tflite.core.errors import UsageError

    request = replace(tiny_request(tmp_path / "out", "fp16"), join_unet=True, max_part_bytes=1400 << 20)
    # 2 x 800M parameters x 2 bytes: ~3.2 GB, over the 1400 MiB cap.
    with pytest.raises(UsageError, match=r"--join-unet: the fp16 UNet would be ~3,2\d\d MiB in one file, "
                                         r"over --max-part-bytes \(1,400 MiB\)"):
        joins_unet(request, _parts(2, 800 << 20))


def test_join_that_cannot_fit_stops_before_any_export(tmp_path):
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.errors import UsageError

    out = tmp_path / "set"
    with pytest.raises(UsageError, match="--join-unet: the fp16 UNet would be ~8 MiB in one file"):
        convert(tiny_request(out, "fp16", components="diffusion", unet_parts=2, join_unet=True,
                             max_part_bytes=2 << 20))
    assert not out.exists()  # nothing exported, converted or left behind
