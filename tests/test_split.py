"""The split planner (pure) and chained parts reproducing the unsplit UNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.errors import PlanError
from sd2tflite.convert.limits import estimate_converter_rss, params_within_memory
from sd2tflite.convert.split import GraphNode, GraphSummary, plan_split

from .conftest import seeded_inputs, tiny_request


def chain_graph(params: list[int], skip_from: int | None = None) -> GraphSummary:
    """x -> n0 -> n1 -> ... ; optionally every node also reads node `skip_from`'s output."""
    nodes = []
    prev = "x"
    for i, p in enumerate(params):
        inputs = (prev,) if skip_from is None or i <= skip_from + 1 else (prev, f"t{skip_from}")
        nodes.append(GraphNode(i, "Dense", p, inputs, (f"t{i}",)))
        prev = f"t{i}"
    return GraphSummary(tuple(nodes), ("x",), (prev,))


def test_one_part_when_it_fits():
    plan = plan_split(chain_graph([100] * 10), bytes_per_weight=4, max_part_bytes=1 << 30)
    assert len(plan.parts) == 1
    assert plan.parts[0].inputs == ("x",) and plan.parts[0].outputs == ("t9",)


def test_cap_forces_balanced_parts_under_cap():
    graph = chain_graph([10_000_000] * 12)  # 480 MB of fp32 weights
    cap = 200 * (1 << 20)
    plan = plan_split(graph, bytes_per_weight=4, max_part_bytes=cap)
    assert len(plan.parts) == 3
    assert all(p.estimated_bytes <= cap for p in plan.parts)
    assert [p.params for p in plan.parts] == [40_000_000] * 3
    assert sum(p.params for p in plan.parts) == graph.total_params


def test_parameter_bound_splits_a_part_that_fits_on_disk():
    """A memory budget bounds parameters per part even when the file would fit the byte cap."""
    graph = chain_graph([10_000_000] * 12)
    plan = plan_split(graph, bytes_per_weight=1, max_part_bytes=1 << 30, max_part_params=50_000_000)
    assert len(plan.parts) == 3 and max(p.params for p in plan.parts) <= 50_000_000


def test_min_parts_and_wiring_with_skip_tensor():
    graph = chain_graph([1000] * 9, skip_from=0)
    plan = plan_split(graph, bytes_per_weight=4, max_part_bytes=1 << 30, min_parts=3,
                      output_names={"t8": "out"})
    assert len(plan.parts) == 3
    # The skip tensor t0 crosses every cut; it is produced by part 0 and read by later parts.
    for part in plan.parts[1:]:
        assert "t0" in part.inputs
        assert plan.producer_of("t0") == 0
    assert plan.parts[-1].outputs == ("out",)
    # Every input is a model input or an output of an earlier part.
    for part in plan.parts:
        for name in part.inputs:
            producer = plan.producer_of(name)
            assert (producer is None and name == "x") or producer < part.index


def test_impossible_cap_is_a_clear_error():
    with pytest.raises(PlanError, match="raise --max-part-bytes"):
        plan_split(chain_graph([50_000_000]), bytes_per_weight=4, max_part_bytes=10 << 20)


CONVERSIONS = Path(__file__).resolve().parent / "data" / "converter-peak-rss.json"
V1_UNET_PARAMS = 859_520_964


def test_memory_model_covers_every_recorded_full_size_conversion():
    """The plan's estimate for the largest file of each recorded v1 conversion (every precision,
    256 and 512, two machines) is at least the whole process tree's measured peak."""
    runs = json.loads(CONVERSIONS.read_text())["runs"]
    assert len(runs) >= 10
    for run in runs:
        estimate = max(estimate_converter_rss(params, run["quant"]) for params in run["file_params"])
        assert estimate >= run["peak_tree_rss_bytes"], (run["run"], estimate, run["peak_tree_rss_bytes"])


def test_default_budget_of_a_24_gb_machine_splits_the_dynamic_unet():
    """80 % of 24 GB: the old model (5.3 bytes per float byte) planned one dynamic part, whose tree
    peaked at 20.8 GB; two parts of ~430M parameters measured 11.1 GB."""
    budget = int(0.8 * 24e9)
    assert params_within_memory(budget, "dynamic") < V1_UNET_PARAMS
    assert estimate_converter_rss(V1_UNET_PARAMS, "dynamic") > 20.8e9
    assert estimate_converter_rss(V1_UNET_PARAMS // 2, "dynamic") < budget
    assert params_within_memory(budget, "int8") < params_within_memory(budget, "fp32")


def test_keras_parts_reproduce_unsplit_unet(keras_models, tiny_dims):
    from sd2tflite.convert.split import KerasGraph

    model = keras_models["diffusion"]
    graph = KerasGraph(model)
    names = {graph.summary.model_outputs[0]: "noise_pred"}
    plan = plan_split(graph.summary, bytes_per_weight=4, max_part_bytes=1 << 30, min_parts=4,
                      output_names=names)
    assert len(plan.parts) == 4
    assert sum(p.params for p in plan.parts) == model.count_params()
    sample = seeded_inputs("diffusion", tiny_dims)[0]
    expected = np.asarray(model([sample["latent"], sample["timestep_embedding"], sample["context"]]))
    values = dict(sample)
    for part in plan.parts:
        outputs = graph.build_part(part, names)([values[n] for n in part.inputs])
        outputs = outputs if isinstance(outputs, list) else [outputs]
        values.update({n: np.asarray(o) for n, o in zip(part.outputs, outputs)})
    np.testing.assert_allclose(values["noise_pred"], expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # a second export of the UNet (3 parts); the shared sets cover a 2-part chain
def test_converted_three_parts_match_keras(tmp_path, keras_models, tiny_dims, export_cache):
    """A cap small enough to force 3 parts on the tiny UNet; LiteRT chain vs unsplit Keras."""
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.core.metrics import parity

    request = tiny_request(tmp_path / "out", components="diffusion", max_part_bytes=7 << 20)
    result = convert(request)
    parts = result.manifest.parts_of("diffusion")
    assert len(parts) == 3
    assert all(p.bytes <= 7 << 20 for p in parts)
    assert result.manifest.split["max_part_bytes"] == 7 << 20
    # Wiring: every input of a later part names a part that outputs it.
    for p in parts:
        for name, producer in p.wiring.items():
            if producer is not None:
                assert name in {o.name for o in parts[producer].outputs}
    unet = load_component(tmp_path / "out", "diffusion")
    for sample in seeded_inputs("diffusion", tiny_dims):
        expected = np.asarray(
            keras_models["diffusion"]([sample["latent"], sample["timestep_embedding"], sample["context"]])
        )
        figures = parity(expected, unet(**sample)["noise_pred"])
        assert figures.psnr_db > 60 and figures.max_abs < 1e-3, figures
    # Re-planned into two parts (the shared sets' SavedModels): the old part files go, nothing else is touched.
    (tmp_path / "out" / "notes.txt").write_text("mine")
    rerun = convert(tiny_request(tmp_path / "out", components="diffusion", force=True, unet_parts=2,
                                 export_cache=str(export_cache)))
    assert [a.path for a in rerun.manifest.artifacts] == ["diffusion_part0.tflite", "diffusion_part1.tflite"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "diffusion_part0.tflite", "diffusion_part1.tflite", "manifest.json", "notes.txt"]
