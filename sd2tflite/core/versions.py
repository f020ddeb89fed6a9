"""Versions of the libraries that made or measured something, for manifests and reports."""

from __future__ import annotations

import sys
from importlib import metadata

from .. import __version__

# distribution -> the key reports use (tensorflow-cpu and tensorflow both report as "tensorflow")
CONVERTER_LIBRARIES = {"tensorflow-cpu": "tensorflow", "tensorflow": "tensorflow", "keras": "keras",
                       "keras-cv": "keras_cv", "ai-edge-litert": "ai_edge_litert"}
RUNTIME_LIBRARIES = {"ai-edge-litert": "ai_edge_litert", "numpy": "numpy"}


def library_versions(libraries: dict[str, str]) -> dict[str, str]:
    """sd2tflite's and Python's version, plus each installed distribution of `libraries`."""
    versions = {"sd2tflite": __version__, "python": sys.version.split()[0]}
    for dist, key in libraries.items():
        try:
            versions.setdefault(key, metadata.version(dist))
        except metadata.PackageNotFoundError:
            pass
    return versions
