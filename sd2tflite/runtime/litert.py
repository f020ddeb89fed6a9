"""Running converted components on LiteRT. Imports no TensorFlow or Keras.

File names, signatures and the wiring between UNet parts come from the manifest only.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..core.errors import ManifestError
from ..core.quiet import native_stderr_muted
from ..core.manifest import Artifact, Manifest, load_manifest, path_in_set


def signature_runner(path: Path, signature_key: str, num_threads: int | None = None):
    """A file's signature runner, ready to call. Under -q, LiteRT's "Created TensorFlow Lite
    XNNPACK delegate" line (printed natively while the delegate is applied) is muted."""
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_muted():
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count() or 1)
        interpreter.allocate_tensors()  # the delegate is applied here, not at the first call
        return interpreter.get_signature_runner(signature_key)


class LiteRTComponent:
    """One component as a callable: its parts chained by the manifest's wiring."""

    def __init__(self, directory: Path, parts: list[Artifact], num_threads: int | None = None):
        if not parts:
            raise ManifestError("the manifest lists no files for this component: convert it first")
        self.parts = parts
        self.runners = []
        for part in parts:
            path = path_in_set(directory, part.path)
            if not path.is_file():
                raise ManifestError(f"{path} is missing: convert again or copy the whole set")
            self.runners.append(signature_runner(path, part.signature_key, num_threads))

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
                   num_threads: int | None = None) -> LiteRTComponent:
    manifest = manifest or load_manifest(Path(directory))
    return LiteRTComponent(Path(directory), manifest.parts_of(component), num_threads)


class LiteRTComponents(Mapping):
    """component name -> LiteRTComponent, each loaded on first use (text-to-image never loads
    the image encoder) and, with `release_unused` (the default), unloaded when the pipeline says
    it is done with it: a run holds one stage's files, packed weights and activation arena at a
    time instead of all of them (the peak is the largest stage, not the sum)."""

    def __init__(self, directory: Path, manifest: Manifest, num_threads: int | None = None,
                 release_unused: bool = True):
        self.directory, self.manifest, self.num_threads = Path(directory), manifest, num_threads
        self.release_unused = release_unused
        self._loaded: dict[str, LiteRTComponent] = {}

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
            self._loaded[component] = load_component(self.directory, component, self.manifest, self.num_threads)
        return self._loaded[component]

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest.components)

    def __len__(self) -> int:
        return len(self.manifest.components)
