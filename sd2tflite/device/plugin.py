"""LiteRT's AOT compiler plugins, run on one .tflite file: `partition` (which ops the NPU takes, in
seconds) and `apply` (partition and compile: the NPU bytecode embedded in a new .tflite).

Both run `apply_plugin_main`, the tool ai-edge-litert's AOT API (`ai_edge_litert.aot`) calls, with the
same library paths it builds (`aot.core.common`). It is run here rather than through `aot_compile`
because ai-edge-litert 2.3's `aot_compile` passes no compiler options to the plugin (the Qualcomm
optimisation level is one) and keeps only the partition counts of the tool's log, while the report
needs the compiler's reason for every rejected op.

The vendors' compiler libraries are not in ai-edge-litert. Qualcomm: the `ai-edge-litert-sdk-qualcomm`
package downloads QAIRT when it is installed and installs empty without network; the same QNN
libraries (QNN 2.50.40, the QAIRT ai-edge-litert 2.3 was built against) are in the `onnxruntime-qnn`
2.6.0 wheel (`pip install "sd2tflite[npu]"`), or in a QAIRT folder named by $SD2TFLITE_QNN_LIBS.
The plugin also links `libQnnLpai.so` (the low-power AI core), which the wheel lacks: a link named
so, pointing at the wheel's libQnnSystem.so (loaded anyway), satisfies the loader; nothing in it is
called for the HTP (NPU) backend.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import util as import_util
from pathlib import Path

from ..core.errors import SD2TFLiteError
from .targets import Target

OPTIMIZATION_LEVELS = ("O1", "O2", "O3")  # Qualcomm: O2 = HtpOptimizeForPrepare (fastest), O3 = the default
DEFAULT_OPTIMIZATION_LEVEL = "O3"
QNN_LIBS_ENV = "SD2TFLITE_QNN_LIBS"
_QNN_NEEDED = ("libQnnHtp.so", "libQnnSystem.so", "libQnnIr.so", "libQnnSaver.so")
_PLUGIN_DIRS = {"qualcomm": "vendors/qualcomm/compiler", "mediatek": "vendors/mediatek/compiler",
                "google_tensor": "vendors/google_tensor/compiler"}
_INSTALL = {
    "qualcomm": (f'pip install "sd2tflite[npu]" (the QNN compiler libraries of onnxruntime-qnn 2.6.0), or set '
                 f"{QNN_LIBS_ENV} to a QAIRT 2.50 lib/x86_64-linux-clang folder"),
    "mediatek": ("pip install ai-edge-litert-sdk-mediatek with network access (it downloads MediaTek's "
                 "NeuroPilot compiler when installed, and installs empty without network)"),
    "google_tensor": ("pip install ai-edge-litert-sdk-google-tensor with network access (it downloads the "
                      "Google Tensor compiler when installed), or set GOOGLE_TENSOR_COMPILER_LIB"),
}


class DeviceSdkError(SD2TFLiteError):
    """A vendor's NPU compiler (or LiteRT's AOT tool) is not installed."""


class CompileError(SD2TFLiteError):
    """A file could not be partitioned or compiled for an NPU."""


@dataclass(frozen=True)
class RejectedOp:
    """One op the NPU compiler refused: its index in the file's graph, its LiteRT type, and why."""

    index: int
    op: str
    reason: str

    def to_json(self) -> dict:
        return {"index": self.index, "op": self.op, "reason": self.reason}


@dataclass(frozen=True)
class Partition:
    """What the NPU takes of one file (all subgraphs added up)."""

    npu_ops: int
    total_ops: int
    partitions: int
    rejected: tuple[RejectedOp, ...] = ()

    @property
    def share(self) -> float:
        return self.npu_ops / self.total_ops if self.total_ops else 0.0

    @property
    def whole(self) -> bool:
        """Every op on the NPU, in one partition: nothing falls back to the CPU."""
        return self.total_ops > 0 and self.npu_ops == self.total_ops and self.partitions == 1

    def groups(self) -> list[list[RejectedOp]]:
        """The rejected ops grouped by op and reason, reasons that differ only in shapes or node names
        together; largest group first."""
        groups: dict[tuple[str, str], list[RejectedOp]] = {}
        for r in self.rejected:
            key = re.sub(r"\[[^\]]*\]|'[^']*_\d+'", "", r.reason)
            groups.setdefault((r.op, key), []).append(r)
        return sorted(groups.values(), key=lambda found: (-len(found), found[0].op))

    def grouped(self) -> list[tuple[str, int, str]]:
        """(op, count, reason) per group (the first op's reason shown), most frequent first."""
        return [(found[0].op, len(found), found[0].reason) for found in self.groups()]

    def describe(self) -> str:
        text = f"{self.npu_ops:,}/{self.total_ops:,} ops on the NPU, {self.partitions} partition" \
               f"{'' if self.partitions == 1 else 's'}"
        if self.rejected:
            text += "; rejected: " + "; ".join(f"{op} ×{n} ({reason})" for op, n, reason in self.grouped())
        return text

    def to_json(self, with_rejected: bool = True) -> dict:
        data = {"npu_ops": self.npu_ops, "total_ops": self.total_ops, "partitions": self.partitions}
        if with_rejected:
            data["rejected"] = [{"op": found[0].op, "count": len(found), "reason": found[0].reason,
                                 "op_indices": [r.index for r in found]} for found in self.groups()]
        return data


@dataclass
class PluginRun:
    """One run of the plugin tool: exit code, merged log, seconds, the partition it reported (None
    when it did not get that far) and, when it failed, the compiler's reason in one line."""

    returncode: int
    log: str
    seconds: float
    partition: Partition | None = None
    failure: str = ""
    output: Path | None = None
    extra: dict = field(default_factory=dict)


# -- finding the tools --------------------------------------------------------------------------------

def _litert_root() -> Path:
    spec = import_util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise DeviceSdkError("ai-edge-litert is not installed: pip install sd2tflite (it depends on ai-edge-litert)")
    return Path(list(spec.submodule_search_locations)[0])


def plugin_tool() -> Path:
    """ai-edge-litert's `apply_plugin_main` (its AOT API runs the same binary)."""
    tool = _litert_root() / "tools" / "apply_plugin_main"
    if not tool.is_file():
        raise DeviceSdkError(f"LiteRT's AOT compiler tool is not in this ai-edge-litert ({tool} is missing): NPU "
                             "compilation needs the Linux x86-64 wheel of ai-edge-litert 2.3")
    return tool


def plugin_dir(vendor: str) -> Path:
    path = _litert_root() / _PLUGIN_DIRS[vendor]
    if not any(path.glob("libLiteRtCompilerPlugin_*.so")):
        raise DeviceSdkError(f"ai-edge-litert has no {vendor} compiler plugin in {path}: reinstall ai-edge-litert 2.3 "
                             "(Linux x86-64 wheel)")
    return path


def _package_dir(name: str) -> Path | None:
    spec = import_util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def qnn_libs() -> tuple[Path, str]:
    """(folder with the QNN compiler libraries, where they came from). The first of: $SD2TFLITE_QNN_LIBS,
    the ai-edge-litert-sdk-qualcomm package's download, the onnxruntime-qnn wheel."""
    candidates: list[tuple[Path, str]] = []
    if os.environ.get(QNN_LIBS_ENV):
        candidates.append((Path(os.environ[QNN_LIBS_ENV]), f"${QNN_LIBS_ENV}"))
    sdk = _package_dir("ai_edge_litert_sdk_qualcomm")
    if sdk is not None:
        candidates.extend((p.parent, "ai-edge-litert-sdk-qualcomm") for p in sdk.rglob("libQnnHtp.so"))
    wheel = _package_dir("onnxruntime_qnn")
    if wheel is not None:
        version = ""
        try:
            from importlib.metadata import version as dist_version
            version = " " + dist_version("onnxruntime-qnn")
        except Exception:  # noqa: BLE001 - the version is a label only
            pass
        candidates.append((wheel, f"onnxruntime-qnn{version}"))
    for folder, source in candidates:
        missing = [name for name in _QNN_NEEDED if not (folder / name).is_file()]
        if not missing:
            return folder, source
        if source.startswith("$"):
            raise DeviceSdkError(f"{QNN_LIBS_ENV}={folder} has no {missing[0]}: point it at a QAIRT "
                                 'lib/x86_64-linux-clang folder, or unset it and pip install "sd2tflite[npu]"')
    raise DeviceSdkError(f"the Qualcomm NPU compiler (QNN libraries) is not installed: {_INSTALL['qualcomm']}")


def sdk_library_dirs(vendor: str, scratch: Path) -> tuple[list[Path], str]:
    """(folders the vendor's plugin needs on the library path, a label of the SDK used); raises
    DeviceSdkError naming the install when the vendor's compiler is missing. `scratch`: a folder for the
    libQnnLpai.so link (see the module's docstring)."""
    if vendor == "qualcomm":
        folder, source = qnn_libs()
        dirs = [folder]
        if not (folder / "libQnnLpai.so").is_file():
            (scratch / "libQnnLpai.so").symlink_to(folder / "libQnnSystem.so")
            dirs.append(scratch)
        return dirs, source
    package = {"mediatek": "ai_edge_litert_sdk_mediatek", "google_tensor": "ai_edge_litert_sdk_google_tensor"}[vendor]
    root = _package_dir(package)
    found = [p.parent for p in root.rglob("*.so")] if root is not None else []
    if vendor == "google_tensor" and os.environ.get("GOOGLE_TENSOR_COMPILER_LIB"):
        found.insert(0, Path(os.environ["GOOGLE_TENSOR_COMPILER_LIB"]))
    if not found:
        raise DeviceSdkError(f"the {vendor.replace('_', ' ')} NPU compiler is not installed: {_INSTALL[vendor]}")
    return sorted(set(found)), package.replace("_", "-")


def check_sdk(target: Target) -> str:
    """The SDK's label if `target`'s compiler is ready to run; else DeviceSdkError naming the install."""
    plugin_tool()
    plugin_dir(target.vendor)
    with tempfile.TemporaryDirectory(prefix="sd2tflite-npu-") as tmp:
        return sdk_library_dirs(target.vendor, Path(tmp))[1]


# -- running it ---------------------------------------------------------------------------------------

def run_plugin(cmd: str, model: Path, output: Path, target: Target, optimization_level: str | None = None,
               timeout: float | None = None) -> PluginRun:
    """Runs the plugin tool (`cmd` "partition" or "apply") on `model`, writing `output`. Never raises for
    a refused model: the run's exit code, log, partition and failure reason say what happened. Raises
    DeviceSdkError when the tool or the vendor's compiler is missing."""
    if cmd not in ("partition", "apply"):
        raise ValueError(cmd)
    from ai_edge_litert.aot.core import common  # the AOT API's library path (the package's folders)

    tool, plugins = plugin_tool(), plugin_dir(target.vendor)
    with tempfile.TemporaryDirectory(prefix="sd2tflite-npu-") as tmp:
        dirs, sdk = sdk_library_dirs(target.vendor, Path(tmp))
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, dirs), common.construct_ld_library_path()])
        args = [str(tool), f"--cmd={cmd}", f"--model={model}", f"--o={output}",
                f"--soc_manufacturer={target.manufacturer}", f"--soc_model={target.soc}", f"--libs={plugins}",
                "--err=--"]
        if target.vendor == "qualcomm":
            args.append(f"--qualcomm_optimization_level={optimization_level or DEFAULT_OPTIMIZATION_LEVEL}")
        # Line-buffered: the QNN validator's messages (stdout) stay in order with LiteRT's (stderr),
        # so each rejected op gets the validator lines that explain it.
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            args = [stdbuf, "-oL", "-eL", *args]
        start = time.perf_counter()
        try:
            done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  text=True, errors="replace")
            code, log = done.returncode, done.stdout
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            code, log = -1, out + f"\nsd2tflite: stopped after {timeout:.0f} s"
        seconds = time.perf_counter() - start
    run = PluginRun(code, log, seconds, partition=parse_partition(log), output=output, extra={"sdk": sdk})
    if code != 0 or not output.is_file():
        run.failure = failure_reason(log, code)
    return run


# -- reading its log ----------------------------------------------------------------------------------

_STATS = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. "
                    r"resulted in (\d+) partitions")
_REJECTED = re.compile(r"LiteRT Op #(\d+) '([^']+)' \(code=\d+\) is not supported")
_QNN_FAILED = re.compile(r"QNN op validation failed: '([^']+)' \(type=([^,)]+)(?:, operation=([^)]+))?\)")
_VALIDATE_START = "QnnBackend_validateOpConfig started"
_VALIDATOR = re.compile(r"<E> (.*?)\s*(?=\s\d+\.\dms \[|$)")
_IO = re.compile(r'^\s+\[\d+\] name="[^"]*" dtype=QNN_DATATYPE_(\w+) dims=\[([^\]]*)\]')
_BOILERPLATE = ("QnnBackend_validateOpConfig failed", "Failed to validate op", "Requested I/O datatype set",
                "Supported I/O datatype sets", "Please refer to")


def parse_partition(log: str) -> Partition | None:
    """The plugin tool's log -> what the NPU takes, with each rejected op's reason: the QNN validator's
    own messages for it, plus the QNN op and its input/output types and shapes."""
    stats = [tuple(int(x) for x in m.groups()) for m in _STATS.finditer(log)]
    if not stats:
        return None
    rejected: list[RejectedOp] = []
    validator: list[str] = []
    qnn_op: str | None = None
    io: dict[str, list[str]] = {"Inputs": [], "Outputs": []}
    section = None
    for line in log.splitlines():
        if _VALIDATE_START in line:
            validator, qnn_op, section = [], None, None
            io = {"Inputs": [], "Outputs": []}
        for message in _VALIDATOR.findall(line):
            message = message.strip()
            if message and not message.startswith(_BOILERPLATE) and message not in validator:
                validator.append(message)
        failed = _QNN_FAILED.search(line)
        if failed:
            name, kind, operation = failed.groups()
            qnn_op, section = operation or kind, None
            io = {"Inputs": [], "Outputs": []}
            continue
        stripped = line.strip()
        if qnn_op and stripped in ("Inputs:", "Outputs:"):
            section = stripped[:-1]
            continue
        entry = _IO.match(line)
        if qnn_op and section and entry:
            dtype, dims = entry.groups()
            io[section].append(f"{dtype.lower()}[{dims}]")
            continue
        reject = _REJECTED.search(line)
        if reject:
            index, op = int(reject.group(1)), reject.group(2)
            rejected.append(RejectedOp(index, op, _reason(qnn_op, validator, io)))
            validator, qnn_op, section = [], None, None
            io = {"Inputs": [], "Outputs": []}
    return Partition(npu_ops=sum(s[1] for s in stats), total_ops=sum(s[2] for s in stats),
                     partitions=sum(s[3] for s in stats), rejected=tuple(rejected))


def _reason(qnn_op: str | None, validator: list[str], io: dict[str, list[str]]) -> str:
    if qnn_op is None and not validator:
        return "the Qualcomm plugin has no QNN op for it"
    said = "; ".join(re.sub(r" in the node '[^']*'|(?<=\.) There is a mismatch .*$", "", m)
                     for m in validator[:2]) or "refused by the QNN validator"
    types = ""
    if io["Inputs"] or io["Outputs"]:
        types = f" [{', '.join(io['Inputs'])} -> {', '.join(io['Outputs'])}]"
    return f"QNN {qnn_op or '?'}: {said}{types}"


def failure_reason(log: str, code: int) -> str:
    """One line: why the run failed, in the compiler's and the tool's words (the last two distinct error
    messages; the tool's own "Failed ..." lines only when nothing else says why)."""
    errors: list[str] = []
    tool_failures: list[str] = []
    lines = ["".join(c if c.isprintable() else " " for c in raw) for raw in log.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("ERROR:") and line.count("'") % 2:  # a quoted value with a line break in it
            for j in range(i + 1, min(i + 3, len(lines))):
                line, lines[j] = f"{line} {lines[j]}", ""
                if line.count("'") % 2 == 0:
                    break
        for message in _VALIDATOR.findall(line):
            if message.strip() and not message.startswith(_BOILERPLATE):
                errors.append(message.strip())
        for segment in re.split(r"(?=\[LITERT_TOOLS:)", line):
            text = segment.strip()
            tool = re.match(r"\[LITERT_TOOLS:[A-Z_]+\]\s*(.*)", text)
            if tool:
                if "fail" in tool.group(1).lower() and tool.group(1).strip() != "Failed":
                    tool_failures.append(tool.group(1).strip())
            elif text.startswith("ERROR:"):
                text = re.sub(r"^ERROR:\s*(\[[^\]]*\]\s*)?", "", text)
                if text:
                    errors.append(text)
            elif "could not create op" in text:
                errors.append(text)
    found = errors or tool_failures
    if not found:
        if code == 0:
            return "the tool wrote no model"
        tail = [l.strip() for l in log.splitlines() if l.strip()][-1:] or [f"exit code {code}"]
        return " ".join(tail[0].split())[:300]
    seen: list[str] = []
    for e in reversed(found):
        if e not in seen:
            seen.append(e)
        if len(seen) == 2:
            break
    return " ".join("; ".join(reversed(seen)).split())[:400]
