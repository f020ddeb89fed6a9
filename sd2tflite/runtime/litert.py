"""Running converted components on LiteRT. Imports no TensorFlow or Keras.

File names, signatures and the wiring between UNet parts come from the manifest only.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ..core.errors import ManifestError
from ..core.quiet import native_stderr_muted
from ..core.manifest import Artifact, Manifest, load_manifest, path_in_set
from . import weight_cache as xnn_cache


def invoke_failure(exc: Exception) -> str:
    """LiteRT's reason for a failed call, without its node dump ("Node number 160 (...) failed to
    invoke"): the part a user can act on."""
    return " ".join(str(exc).split()).split("Node number")[0].strip().rstrip(".") or type(exc).__name__


def signature_runner(path: Path, signature_key: str, num_threads: int | None = None,
                     weight_cache: Path | None = None, note: Callable[[str], None] | None = None):
    """A file's signature runner, ready to call: named arrays in, a dict of named arrays out.
    With `weight_cache` (a folder), XNNPACK's packed weights live in a checked file there (see
    weight_cache.py) and LiteRT's CompiledModel runs the file; the outputs are the same bits.
    When the folder cannot take the file, `note` hears why and the Interpreter runs it.
    Under -q, LiteRT's "Created TensorFlow Lite XNNPACK delegate" line (printed natively while
    the delegate is applied) is muted."""
    threads = num_threads or os.cpu_count() or 1
    if weight_cache is not None:
        runner = _cached_runner(Path(path), signature_key, threads, Path(weight_cache), note or (lambda text: None))
        if runner is not None:
            return runner
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_muted():
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()  # the delegate is applied here, not at the first call
        return interpreter.get_signature_runner(signature_key)


_environment = None  # one LiteRT environment per process, shared by every CompiledModel


def _cached_runner(path: Path, signature_key: str, threads: int, folder: Path, note: Callable[[str], None]):
    """A CompiledRunner whose XNNPACK weights are in the checked cache file for `path` (built
    first in a child process when missing or damaged), or None when the folder cannot take it."""
    from .integrity import file_sha256

    target = xnn_cache.prepare(path, file_sha256(path, reuse=True), folder, threads, note)
    if target is None:
        return None
    try:
        return CompiledRunner(path, signature_key, threads, target)
    except (RuntimeError, ValueError) as exc:
        note(f"weight cache file {target} does not load ({invoke_failure(exc)[:120]}): removed, running "
             f"{path.name} without it")
        xnn_cache.remove(target)
        return None


def _drop_environment() -> None:
    """At exit, the environment's shutdown lines (DestroyAccelerator ...) are muted like its start-up
    lines. The TensorBuffer wrapper's own environment lives until C++ tears down, after every Python
    exit handler, so file descriptor 2 stays on /dev/null from here on (the run's own output is
    done: this handler runs after the command returned)."""
    global _environment
    with native_stderr_muted(always=True):
        _environment = None
        gc.collect()
    sys.stderr.flush()
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)


class CompiledRunner:
    """One signature of a file on LiteRT's CompiledModel, called like the Interpreter's signature
    runner. Its input and output buffers are made once; outputs are returned as new arrays."""

    def __init__(self, path: Path, signature_key: str, threads: int, cache_file: Path):
        global _environment
        from ai_edge_litert.compiled_model import CompiledModel, Environment
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        # LiteRT logs about twenty start-up lines (accelerator registry, vendor plugins this
        # machine lacks) natively: always muted; a failure still raises.
        with native_stderr_muted(always=True):
            if _environment is None:
                _environment = Environment.create()
                atexit.register(_drop_environment)
            options = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(
                num_threads=threads, xnnpack_weight_cache_path=str(cache_file)))
            self.model = CompiledModel.from_file(str(path), environment=_environment, options=options)
            self.key = signature_key
            self.outputs = {name: (tuple(int(d) for d in spec["shape"]), np.dtype(spec["dtype"]))
                            for name, spec in self.model.get_output_tensor_details(signature_key).items()}
            inputs = self.model.get_input_tensor_details(signature_key)
            self.inputs = {name: self.model.create_input_buffer_by_name(signature_key, name) for name in inputs}
            self.output_buffers = {name: self.model.create_output_buffer_by_name(signature_key, name)
                                   for name in self.outputs}
            for name, spec in inputs.items():  # the first write creates the wrapper's environment (logged)
                self.inputs[name].write(np.zeros([int(d) for d in spec["shape"]], np.dtype(spec["dtype"])))

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.inputs):
            raise ValueError(f"inputs {sorted(inputs)} are not the signature's {sorted(self.inputs)}")
        for name, value in inputs.items():
            self.inputs[name].write(np.ascontiguousarray(value))
        self.model.run_by_name(self.key, self.inputs, self.output_buffers)
        return {name: self.output_buffers[name].read(int(np.prod(shape)), dtype).reshape(shape)
                for name, (shape, dtype) in self.outputs.items()}


class LiteRTComponent:
    """One component as a callable: its parts chained by the manifest's wiring."""

    def __init__(self, directory: Path, parts: list[Artifact], num_threads: int | None = None,
                 weight_cache: Path | None = None, note: Callable[[str], None] | None = None):
        if not parts:
            raise ManifestError("the manifest lists no files for this component: convert it first")
        self.parts = parts
        self.runners = []
        for part in parts:
            path = path_in_set(directory, part.path)
            if not path.is_file():
                raise ManifestError(f"{path} is missing: convert again or copy the whole set")
            self.runners.append(signature_runner(path, part.signature_key, num_threads, weight_cache, note))

    @property
    def input_specs(self):
        produced = {o.name for p in self.parts for o in p.outputs}
        seen, specs = set(), []
        for p in self.parts:
            for s in p.inputs:
                if s.name not in produced and s.name not in seen:
                    seen.add(s.name)
                    specs.append(s)
        return specs

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        values = dict(inputs)
        for part, runner in zip(self.parts, self.runners):
            feed = {s.name: np.asarray(values[s.name], dtype=s.dtype) for s in part.inputs}
            values.update(runner(**feed))
        return {s.name: values[s.name] for s in self.parts[-1].outputs}


def load_component(directory: Path, component: str, manifest: Manifest | None = None,
                   num_threads: int | None = None, weight_cache: Path | None = None,
                   note: Callable[[str], None] | None = None) -> LiteRTComponent:
    manifest = manifest or load_manifest(Path(directory))
    return LiteRTComponent(Path(directory), manifest.parts_of(component), num_threads, weight_cache, note)


class LiteRTComponents(Mapping):
    """component name -> LiteRTComponent, each loaded on first use (text-to-image never loads
    the image encoder) and, with `release_unused` (the default), unloaded when the pipeline says
    it is done with it: a run holds one stage's files, packed weights and activation arena at a
    time instead of all of them (the peak is the largest stage, not the sum). `weight_cache`: a
    folder for XNNPACK's packed weights as files (see signature_runner); `note` hears when a file
    runs without it."""

    def __init__(self, directory: Path, manifest: Manifest, num_threads: int | None = None,
                 release_unused: bool = True, weight_cache: Path | None = None,
                 note: Callable[[str], None] | None = None):
        self.directory, self.manifest, self.num_threads = Path(directory), manifest, num_threads
        self.release_unused, self.weight_cache, self.note = release_unused, weight_cache, note
        self._loaded: dict[str, LiteRTComponent] = {}

    @property
    def loaded(self) -> list[str]:
        """The components held in memory now, in the order they were loaded."""
        return list(self._loaded)

    def release(self, component: str) -> None:
        """Unloads a component (its interpreters, their mapped file and memory); loaded again if
        it is used again."""
        if self.release_unused and self._loaded.pop(component, None) is not None:
            gc.collect()  # the interpreters' native memory goes with their last reference

    def __getitem__(self, component: str) -> LiteRTComponent:
        if component not in self._loaded:
            if component not in self.manifest.components:
                raise ManifestError(
                    f"{self.directory} has no {component}: convert it with "
                    f"sd2tflite convert --components {component}"
                )
            self._loaded[component] = load_component(self.directory, component, self.manifest, self.num_threads,
                                                     self.weight_cache, self.note)
        return self._loaded[component]

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest.components)

    def __len__(self) -> int:
        return len(self.manifest.components)
