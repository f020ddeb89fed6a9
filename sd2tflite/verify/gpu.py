"""Would Android's GPU delegate take every operator of a file? TFLite's model analyzer (the C++
behind `tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)`) checks each operator against
the delegate's rules from the flatbuffer alone: no GPU, no interpreter, no weights read as numbers.

Since TensorFlow 2.18 the analyzer no longer checks (tensorflow/tensorflow#77042) and says "looks
compatible" for any model; ai-edge-litert 2.3's copy and TensorFlow 2.21's do the same. So each
analyzer is first asked about a probe model it must refuse, and one that passes it is not used:
verify says "unknown" and why, unless `--gpu-analyzer PYTHON` names a Python whose TensorFlow (2.17)
still checks.

Information, not parity: verify reports it per file and never fails on it (a file the delegate
cannot take whole still runs, with the refused operators on the CPU)."""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import ManifestError
from ..core.manifest import Manifest, path_in_set

SUPPORTED, NOT_SUPPORTED, UNKNOWN = "supported", "not supported", "unknown"

_OP = re.compile(r"^\s+Op#(\d+) (\S+?)\(")
_WARNING = "GPU COMPATIBILITY WARNING: "
_SUBGRAPH_SUMMARY = re.compile(r"^Subgraph#\d+ has GPU delegate compatibility issues at nodes ")
_COMPATIBLE = re.compile(r"^Your model looks compat\w* with GPU delegate")
_RUNTIME = re.compile(r"TFLite runtime version (\S+?)\.?$")


@dataclass(frozen=True)
class Blocker:
    """Operators of one type that the delegate refuses for one reason."""

    op: str
    reason: str
    count: int


@dataclass(frozen=True)
class GpuSupport:
    """One file's verdict: SUPPORTED, NOT_SUPPORTED or UNKNOWN (then `reason` says why)."""

    path: str
    status: str
    ops: int = 0
    blockers: tuple[Blocker, ...] = ()
    runtime: str | None = None  # the TFLite version whose delegate rules were applied
    reason: str = ""
    folded: int = 0  # operator inputs read as float16 constants, as the delegate reads them (fold_fp16_dequantize)

    @property
    def unsupported_ops(self) -> int:
        return sum(b.count for b in self.blockers)

    def describe(self) -> str:
        folded = f" (float16 weights read as the delegate reads them: {self.folded:,} inputs)" if self.folded else ""
        if self.status == SUPPORTED:
            return f"all {self.ops:,} ops supported{folded}"
        if self.status == NOT_SUPPORTED:
            listed = "; ".join(f"{op} ×{count} ({reason})" for op, count, reason in self.grouped())
            return f"{self.unsupported_ops:,} of {self.ops:,} ops not supported{folded}: {listed}"
        return f"unknown: {self.reason}"

    def grouped(self) -> list[tuple[str, int, str]]:
        """(op, count, reason) with the reasons that differ only in shapes merged (the first one
        shown): the UNet's refused ADDs are one rule at 4 sizes, not 4 problems."""
        groups: dict[tuple[str, str], list[Blocker]] = {}
        for b in self.blockers:
            groups.setdefault((b.op, re.sub(r"\[[^\]]*\]", "[]", b.reason)), []).append(b)
        merged = [(op, sum(b.count for b in found), found[0].reason
                   + (f"; {len(found)} shapes" if len(found) > 1 else "")) for (op, _), found in groups.items()]
        return sorted(merged, key=lambda item: -item[1])

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status, "ops": self.ops,
                "unsupported_ops": self.unsupported_ops, "runtime": self.runtime, "reason": self.reason,
                "float16_inputs_folded": self.folded,
                "blockers": [{"op": b.op, "reason": b.reason, "count": b.count} for b in self.blockers]}


def parse_analyzer_text(path: str, text: str) -> GpuSupport:
    """The analyzer's text dump -> a verdict. The dump lists every operator as `  Op#N NAME(...)`;
    with the GPU check on, each refused operator is followed by `GPU COMPATIBILITY WARNING: <reason>`,
    and the dump ends with either a per-subgraph summary of the refused nodes or "looks compatible"."""
    ops = 0
    last_op: str | None = None
    refused: Counter = Counter()
    compatible = False
    summary = False
    runtime = None
    for line in text.splitlines():
        match = _OP.match(line)
        if match:
            ops, last_op = ops + 1, match.group(2)
            continue
        if line.startswith(_WARNING):
            message = line[len(_WARNING):].strip()
            if _SUBGRAPH_SUMMARY.match(message):
                summary = True
                runtime = runtime or _runtime(message)
            elif last_op is not None:
                refused[(last_op, message)] += 1
            continue
        if _COMPATIBLE.match(line):
            compatible = True
            runtime = runtime or _runtime(line)
    if refused:
        blockers = tuple(Blocker(op, reason, n) for (op, reason), n in
                         sorted(refused.items(), key=lambda item: (-item[1], item[0])))
        return GpuSupport(path, NOT_SUPPORTED, ops, blockers, runtime)
    if compatible and not summary:
        return GpuSupport(path, SUPPORTED, ops, (), runtime)
    if "Failed to mmap" in text:  # the error reporter's words run together before this line
        return GpuSupport(path, UNKNOWN, reason=f"the analyzer cannot read it as a TFLite flatbuffer "
                                                f"({_one_line(text.replace('Failed to mmap', '; failed to mmap'))})")
    return GpuSupport(path, UNKNOWN, ops, reason=f"the analyzer gave no GPU verdict ({_one_line(text)[:120]})")


def _runtime(line: str) -> str | None:
    match = _RUNTIME.search(line.strip())
    return match.group(1) if match else None


PROBE_OP = "sd2tflite_gpu_probe"
NO_CHECKS = ("{names} answer \"looks compatible\" for any model, a custom op included: the GPU checks were "
             "taken out of TFLite's analyzer (tensorflow/tensorflow#77042); TensorFlow 2.17's analyzer still "
             "checks: pass a Python that has it as --gpu-analyzer")
# Run by --gpu-analyzer's Python: the analyzer's text for one file.
_EXTERNAL = ("import sys\n"
             "from tensorflow.lite.python.analyzer_wrapper._pywrap_analyzer_wrapper import ModelAnalyzer\n"
             "sys.stdout.write(ModelAnalyzer(sys.argv[1], True, True))\n")


# An analyzer: ModelAnalyzer(path or model bytes, is_path, check_gpu) -> the analyzer's text dump.
Analyzer = Callable[[str | bytes, bool, bool], str]


def installed_analyzers() -> list[tuple[str, Analyzer]]:
    """(name, analyzer) for each analyzer in this Python: ai-edge-litert's copy first (no TensorFlow
    import), then TensorFlow's."""
    found = []
    try:
        from ai_edge_litert._pywrap_analyzer_wrapper import ModelAnalyzer

        found.append(("ai-edge-litert's analyzer", ModelAnalyzer))
    except ImportError:
        pass
    try:
        from tensorflow.lite.python.analyzer_wrapper._pywrap_analyzer_wrapper import ModelAnalyzer

        found.append(("TensorFlow's analyzer", ModelAnalyzer))
    except ImportError:
        pass
    return found


def external_analyzer(python: str):
    """TensorFlow's analyzer run by another Python (one with TensorFlow 2.17, say), one process per file."""
    def analyze(model, is_path: bool, check_gpu: bool) -> str:
        with tempfile.TemporaryDirectory(prefix="sd2tflite-gpu-") as tmp:
            if not is_path:  # the probe model
                path = Path(tmp) / "probe.tflite"
                path.write_bytes(model)
                model = str(path)
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            done = subprocess.run([python, "-c", _EXTERNAL, str(model)], capture_output=True, text=True,
                                  timeout=600, env=env)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RuntimeError(last)
        return done.stdout
    return analyze


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def fold_fp16_dequantize(data, write: bool = True) -> int:
    """Point every input that a float16 DEQUANTIZE feeds at that float16 tensor, in place in `data`
    (a bytearray; with write=False any buffer, only counted). The GPU delegate does this before it
    checks an operator (its partition helper remaps those inputs: fp16 weights are its native
    format); the analyzer checks each operator alone and would count the dequantized weights of an
    fp16 CONV_2D as runtime inputs and refuse it. Returns the number of inputs moved."""
    fb = _schema()
    model = fb.Model.GetRootAs(data, 0)
    codes = [max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
             for code in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))]
    moved = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        sources = {op.Outputs(0): op.Inputs(0) for op in ops
                   if codes[op.OpcodeIndex()] == fb.BuiltinOperator.DEQUANTIZE and op.InputsLength() == 1
                   and graph.Tensors(op.Inputs(0)).Type() == fb.TensorType.FLOAT16}
        for op in ops:
            if not sources or codes[op.OpcodeIndex()] == fb.BuiltinOperator.DEQUANTIZE or not op.InputsLength():
                continue
            inputs = op.InputsAsNumpy()  # a view into `data`
            for k, tensor in enumerate(inputs.tolist()):
                if tensor in sources:
                    if write:
                        inputs[k] = sources[tensor]
                    moved += 1
    return moved


def fp16_folded_copy(path: Path, tmp: Path) -> tuple[Path, int]:
    """`path`, or a copy of it with fold_fp16_dequantize applied when it has float16 weights. The
    look reads only the flatbuffer's tables (mapped); the copy is made for fp16 files only."""
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            if not fold_fp16_dequantize(mapped, write=False):
                return path, 0
    except Exception:  # noqa: BLE001 - not a readable flatbuffer: the analyzer says so in its own words
        return path, 0
    data = bytearray(path.read_bytes())
    moved = fold_fp16_dequantize(data)
    copy = tmp / path.name
    copy.write_bytes(data)
    return copy, moved


def _probe_model() -> bytes:
    """A one-operator model whose operator is a custom op no GPU delegate knows: an analyzer that
    checks must refuse it."""
    import flatbuffers

    fb = _schema()

    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode, code.version = PROBE_OP, 1
    tensors = []
    for name in ("x", "y"):
        tensor = fb.TensorT()
        tensor.shape, tensor.type, tensor.name, tensor.buffer = [1, 4], fb.TensorType.FLOAT32, name, 0
        tensors.append(tensor)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators, graph.name = tensors, [0], [1], [op], "main"
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [fb.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# The analyzers tried for this Python's verdicts (None: installed_analyzers()), and which one was
# chosen per --gpu-analyzer: the probe runs once per process.
_candidates: list[tuple[str, Analyzer]] | None = None
_chosen: dict[str | None, tuple[Analyzer | None, str | None]] = {}


def use_analyzers(candidates: list[tuple[str, Analyzer]] | None = None) -> None:
    """Sets the analyzers tried, in order, as (name, analyzer) pairs; None: the ones installed in this
    Python. Forgets every earlier choice, so the next file probes again. For an application that
    ships its own analyzer, and for tests (a stub that answers with recorded text)."""
    global _candidates
    _candidates = list(candidates) if candidates is not None else None
    _chosen.clear()


def chosen_analyzer(python: str | None = None) -> tuple[Analyzer | None, str | None]:
    """(analyzer, None) for the first analyzer that really checks GPU support (`python`'s if given,
    else one of use_analyzers'), or (None, why not). Each is first asked about the probe model: since
    TensorFlow 2.18 the analyzer says "looks compatible" for any model, which would report every
    file as supported."""
    if python in _chosen:
        return _chosen[python]
    if python:
        candidates = [(f"{python}'s TensorFlow analyzer", external_analyzer(python))]
    else:
        candidates = _candidates if _candidates is not None else installed_analyzers()
    reasons, unchecked = [], []
    for name, analyzer in candidates:
        try:
            probe = parse_analyzer_text("probe", analyzer(_probe_model(), False, True))
        except Exception as exc:  # noqa: BLE001 - a broken analyzer is a reason, not a crash
            reasons.append(f"{name} failed on a probe model ({_one_line(exc)})")
            continue
        if probe.status == NOT_SUPPORTED and any(b.op == PROBE_OP for b in probe.blockers):
            _chosen[python] = (analyzer, None)
            return _chosen[python]
        unchecked.append(f"{name} (TFLite {probe.runtime or 'of unknown version'})")
    if unchecked:
        reasons.insert(0, NO_CHECKS.format(names=" and ".join(unchecked)))
    if not candidates:
        reasons.append("no TFLite model analyzer is installed (ai-edge-litert or TensorFlow has one)")
    _chosen[python] = (None, "; ".join(reasons))
    return _chosen[python]


def analyze_file(path: Path, name: str | None = None, python: str | None = None) -> GpuSupport:
    """One file's verdict; every failure is UNKNOWN with a one-line reason, never an exception.
    `python`: run the analyzer of that Python instead (see external_analyzer)."""
    name = name or Path(path).name
    analyzer, why_not = chosen_analyzer(python)
    if analyzer is None:
        return GpuSupport(name, UNKNOWN, reason=why_not)
    try:
        with tempfile.TemporaryDirectory(prefix="sd2tflite-gpu-") as tmp:
            analyzed, folded = fp16_folded_copy(Path(path), Path(tmp))
            text = analyzer(str(analyzed), True, True)
    except Exception as exc:  # noqa: BLE001
        return GpuSupport(name, UNKNOWN, reason=f"the analyzer failed ({_one_line(exc)})")
    return dataclasses.replace(parse_analyzer_text(name, text), folded=folded)


def analyze_set(directory: Path, manifest: Manifest, skip: dict[str, str] | None = None,
                python: str | None = None) -> list[GpuSupport]:
    """Every file of the manifest, in its order. `skip`: manifest path -> why it is not analyzed
    (verify passes the files that failed integrity: a truncated flatbuffer is not read)."""
    skip = skip or {}
    results = []
    for artifact in manifest.artifacts:
        if artifact.path in skip:
            results.append(GpuSupport(artifact.path, UNKNOWN, reason=skip[artifact.path]))
            continue
        try:
            path = path_in_set(Path(directory), artifact.path)  # a link out of the set is not read
        except ManifestError as exc:
            results.append(GpuSupport(artifact.path, UNKNOWN, reason=str(exc)))
            continue
        results.append(analyze_file(path, artifact.path, python))
    return results


def _one_line(exc_or_text) -> str:
    return " ".join(str(exc_or_text).split())[:200] or type(exc_or_text).__name__


def describe_set(results: list[GpuSupport]) -> list[str]:
    """The verify table's section: one line per file (a reason shared by every file, once)."""
    if not results:
        return []
    runtime = next((r.runtime for r in results if r.runtime), None)
    title = f"  GPU delegate (TFLite's model analyzer{' ' + runtime if runtime else ''}; information, not a check)"
    reasons = {r.reason for r in results}
    if all(r.status == UNKNOWN for r in results) and len(reasons) == 1:
        return [f"{title}: unknown for every file: {reasons.pop()}"]
    whole = sum(r.status == SUPPORTED for r in results)
    width = max(len(r.path) for r in results)
    return [f"{title}: {whole} of {len(results)} files supported whole"] + \
        [f"    {r.path:{width}s}  {r.describe()}" for r in results]


def summary_json(results: list[GpuSupport]) -> dict:
    return {"analyzer": "TFLite's model analyzer, GPU delegate compatibility (information; verify does not fail on it)",
            "runtime": next((r.runtime for r in results if r.runtime), None),
            "files_supported": sum(r.status == SUPPORTED for r in results), "files": [r.to_json() for r in results]}

