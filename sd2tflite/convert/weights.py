"""Where component weights come from: the Hub (pinned sha256), local keras-cv files, random(seed),
the weights trained and shipped in the package (tiny), or a PyTorch checkpoint (checkpoint_source.py:
.safetensors, diffusers folders, hf://, LoRAs).

`parse_weights` turns the --weights text into a `WeightsSource`; `resolve` turns that into one
`ResolvedWeights` per component (a local file plus its identity for the manifest), downloading
from the Hub if needed. Loading into a Keras model happens in `load_into`. Only `load_into`
touches Keras.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError, WeightsError
from ..core.fsutil import sha256_file
from ..core.registry import COMPONENTS, ModelFamily
from .checkpoint_source import OVERRIDE_NAMES, CheckpointOptions, is_checkpoint

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TRAINED_ROOT = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "hub" | "random" | "trained" | "dir" | "files" | "checkpoint"
    seed: int = 0
    directory: Path | None = None
    files: tuple[tuple[str, Path], ...] = ()  # "files": per component; "checkpoint": its overrides
    checkpoint: str | None = None  # path or hf:// address
    options: CheckpointOptions = CheckpointOptions()


@dataclass(frozen=True)
class ResolvedWeights:
    """One component's weights: a file to load (None for random) and its identity."""

    component: str
    path: Path | None
    identity: dict

    @property
    def seed(self) -> int | None:
        return self.identity.get("seed")


def parse_weights(text: str | None, family: ModelFamily,
                  options: CheckpointOptions = CheckpointOptions()) -> WeightsSource:
    """--weights (repeated values joined by commas) and the checkpoint options -> a source."""
    text = (text or family.default_weights).strip()
    items = [t.strip() for t in text.split(",") if t.strip()]
    bases = [t for t in items if "=" not in t]
    if bases and is_checkpoint(bases[0]):
        if len(bases) > 1:
            raise UsageError(f"--weights names two models ({bases[0]}, {bases[1]}): give one, plus "
                             "COMPONENT=PATH overrides (unet, vae, text_encoder)")
        overrides = []
        for item in (t for t in items if t != bases[0]):
            name, _, path = item.partition("=")
            if name.strip() not in (*OVERRIDE_NAMES, "taesd") or not path.strip():
                raise UsageError(f"bad --weights override {item!r}: use unet=PATH, vae=PATH, text_encoder=PATH or "
                                 "taesd=PATH (the tiny autoencoder)")
            if name.strip() in dict(overrides):
                raise UsageError(f"--weights gives {name.strip()}= twice: keep one")
            overrides.append((name.strip(), Path(path.strip()).expanduser()))
        return WeightsSource("checkpoint", files=tuple(overrides), checkpoint=bases[0], options=options)
    if options.given:
        raise UsageError("--lora, --prediction-type, --no-ema and --attention-heads apply to PyTorch checkpoints: "
                         "pass a .safetensors file, a diffusers folder or hf://OWNER/REPO with --weights")
    if text == "hub":
        if family.hub_files is None:
            raise UsageError(
                f"the {family.name} model has no released weights: use --weights random[:SEED] "
                "or local files"
            )
        return WeightsSource("hub")
    if text == "trained":
        if family.trained is None:
            raise UsageError(f"the {family.name} model ships no trained weights: use --weights "
                             f"{family.default_weights}, a checkpoint or local files")
        return WeightsSource("trained")
    if text == "random" or text.startswith("random:"):
        seed_text = text.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise UsageError(f"bad seed in --weights {text!r}: use random or random:SEED (an integer)")
        return WeightsSource("random", seed=int(seed_text))
    if bases and len(items) > 1:
        raise UsageError(f"--weights {text!r} mixes {bases[0]!r} with other values: give one source, or "
                         "COMPONENT=PATH pairs")
    if "=" in text:
        pairs = []
        for item in text.split(","):
            name, sep, path = item.partition("=")
            name = name.strip()
            if not sep or not path.strip():
                raise UsageError(f"bad --weights item {item!r}: use COMPONENT=PATH[,COMPONENT=PATH]")
            if name not in COMPONENTS and name != "taesd":
                raise UsageError(
                    f"unknown component {name!r} in --weights: choose from {', '.join(COMPONENTS)}"
                )
            pairs.append((name, Path(path.strip()).expanduser()))
        return WeightsSource("files", files=tuple(pairs))
    path = Path(text).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"--weights {text!r} is not 'hub', 'random[:SEED]', a directory or COMPONENT=PATH pairs: "
            "fix the value"
        )
    return WeightsSource("dir", directory=path)


def resolve(source: WeightsSource, family: ModelFamily, components: list[str],
            hash_files: bool = True) -> dict[str, ResolvedWeights]:
    """One ResolvedWeights per component; every file exists and looks like HDF5 (keras-cv) or is a
    checkpoint whose layout, family and widths are known. `hash_files=False`: planning only."""
    if source.kind == "checkpoint":
        from .checkpoint_source import identity_of, open_source

        overrides = dict(source.files)
        taesd = overrides.pop("taesd", None)
        checkpoint = open_source(source.checkpoint, overrides, source.options)
        identity = identity_of(checkpoint, source.checkpoint) if hash_files else {
            "kind": "checkpoint", "path": str(checkpoint.source.path), "family": checkpoint.family,
            "architecture": checkpoint.architecture.to_json(), "prediction_type": checkpoint.prediction_type}
        resolved = {c: ResolvedWeights(c, None, identity) for c in components if c not in TAESD_COMPONENTS}
        for c in (c for c in components if c in TAESD_COMPONENTS):
            if taesd is None:
                raise UsageError(f"{c} is the tiny autoencoder, which a checkpoint does not hold: add taesd=PATH "
                                 "(a TAESD / AutoencoderTiny folder or .safetensors) to --weights")
            resolved[c] = ResolvedWeights(c, None, {**identity, "taesd": _taesd_identity(taesd, c, hash_files)})
        return resolved
    resolved: dict[str, ResolvedWeights] = {}
    for component in components:
        if component in TAESD_COMPONENTS and source.kind not in ("random", "files"):
            raise UsageError(f"{component} is the tiny autoencoder, which keras-cv does not release: convert it from "
                             "its files (--weights CHECKPOINT,taesd=PATH or --weights taesd=PATH) or --weights random")
        if source.kind == "random":
            # A distinct, reproducible seed per component.
            seed = source.seed + list(COMPONENTS).index(component)
            resolved[component] = ResolvedWeights(
                component, None, {"kind": "random", "seed": seed}
            )
            continue
        if component in TAESD_COMPONENTS:  # --weights taesd=PATH (or taesd_decoder= / taesd_encoder=)
            given = dict(source.files)
            path = given.get(component) or given.get("taesd")
            if path is None:
                raise UsageError(f"no weights for {component}: add taesd=PATH (a TAESD / AutoencoderTiny folder or "
                                 "file) to --weights")
            resolved[component] = ResolvedWeights(component, None, _taesd_identity(path, component, hash_files))
            continue
        if source.kind == "hub":
            resolved[component] = _download(family, component)
            continue
        if source.kind == "trained":
            resolved[component] = _trained(family, component)
            continue
        if source.kind == "dir":
            if family.hub_files is None:
                raise UsageError(
                    f"the {family.name} model has no released file names: pass "
                    "--weights COMPONENT=PATH,... instead of a directory"
                )
            path = source.directory / family.hub_files[component].filename
        else:
            given = dict(source.files)
            if component not in given:
                raise UsageError(
                    f"no weights for {component}: add {component}=PATH to --weights, or leave it "
                    "out of --components"
                )
            path = given[component]
        _check_weights_file(path, component)
        resolved[component] = ResolvedWeights(
            component, path, {"kind": "file", "path": str(path), "sha256": sha256_file(path)}
        )
    return resolved


TAESD_COMPONENTS = ("taesd_decoder", "taesd_encoder")


def _taesd_identity(path, component: str, hash_files: bool = True) -> dict:
    """The tiny autoencoder's files (checked to hold this component), as the manifest records them."""
    from .taesd import open_taesd

    vae = open_taesd(Path(path).expanduser().resolve())
    if not vae.has(component):
        raise WeightsError(f"{path} holds no {component} weights: pass the matching taesd file or the whole "
                           "AutoencoderTiny folder")
    identity = vae.identity() if hash_files else {"kind": "taesd", "path": str(vae.path),
                                                  "architecture": vae.arch.to_json()}
    return identity


def _check_weights_file(path: Path, component: str) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file for {component} not found: {path} (check the path)")
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_MAGIC))
    if head != _HDF5_MAGIC:
        raise WeightsError(
            f"{path} is not a Keras weights file (.h5 / .weights.h5, HDF5): pass the {component} "
            "weights saved by Keras"
        )


def _trained(family: ModelFamily, component: str) -> ResolvedWeights:
    """The package's own weights file for a component; its sha256 names it in the manifest."""
    path = TRAINED_ROOT / family.trained / f"{component}.weights.h5"
    if not path.is_file():
        raise WeightsError(f"this sd2tflite install lacks its trained {family.name} weights ({path}): reinstall "
                           "the package, or pass --weights random")
    _check_weights_file(path, component)
    return ResolvedWeights(component, path, {"kind": "trained", "name": f"sd2tflite-{family.trained}",
                                             "file": f"{family.trained}/{path.name}", "sha256": sha256_file(path)})


def _download(family: ModelFamily, component: str) -> ResolvedWeights:
    hub_file = family.hub_files[component]
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=hub_file.repo_id, filename=hub_file.filename))
    except Exception as exc:  # the client raises many types: offline, HTTP, connection
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        why = "HF_HUB_OFFLINE is set and the file is not in the Hub cache" if offline else (
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        )
        raise WeightsError(
            f"cannot get {hub_file.filename} from the Hub repo {hub_file.repo_id} ({why}): "
            f"download it elsewhere and pass --weights DIR (a folder with the Hub file names) "
            f"or --weights {component}=PATH"
        ) from exc
    actual = sha256_file(path)
    if actual != hub_file.sha256:
        raise WeightsError(
            f"{path} has sha256 {actual[:12]}…, not the {hub_file.sha256[:12]}… keras-cv pins for "
            f"{hub_file.filename}: delete it from the Hub cache and download again"
        )
    return ResolvedWeights(
        component,
        path,
        {"kind": "hub", "repo_id": hub_file.repo_id, "filename": hub_file.filename,
         "sha256": actual},
    )


def from_identity(identity: dict, family: ModelFamily, component: str) -> ResolvedWeights:
    """The weights a manifest says a component was converted from, found again (verify)."""
    kind = identity.get("kind")
    if kind == "random" and isinstance(identity.get("seed"), int):
        return ResolvedWeights(component, None, dict(identity))
    if kind == "hub" and family.hub_files is not None:
        return _download(family, component)
    if kind == "trained" and family.trained is not None:
        found = _trained(family, component)
        if found.identity["sha256"] != identity.get("sha256"):
            raise WeightsError(
                f"the set was converted from other trained {family.name} weights (sha256 "
                f"{str(identity.get('sha256'))[:12]}…) than this sd2tflite ships ({found.identity['sha256'][:12]}…): "
                "convert it again, or verify with the sd2tflite version that converted it")
        return found
    if kind == "taesd" or identity.get("taesd"):
        taesd = identity.get("taesd") or identity
        for f in taesd.get("files", []):
            if not Path(f["path"]).is_file() or sha256_file(Path(f["path"])) != f["sha256"]:
                raise WeightsError(f"the tiny autoencoder file this set was converted from ({f['path']}) is gone or "
                                   "changed: pass it again with --weights taesd=PATH")
        return ResolvedWeights(component, None, dict(identity))
    if kind == "checkpoint":
        from .checkpoint_source import reopen

        reopen(identity, check_hashes=True)
        return ResolvedWeights(component, None, dict(identity))
    if kind == "file":
        path = Path(identity.get("path", ""))
        if not path.is_file() or sha256_file(path) != identity.get("sha256"):
            raise WeightsError(
                f"the {component} weights this set was converted from ({path}) are gone or changed: "
                f"pass them with --weights {component}=PATH"
            )
        return ResolvedWeights(component, path, dict(identity))
    raise WeightsError(
        f"the manifest does not say where the {component} weights came from ({identity!r}): "
        "pass --weights"
    )


def load_into(model, weights: ResolvedWeights) -> None:
    """Loads `weights` into a freshly built Keras model (random weights: nothing to load)."""
    if weights.path is None:
        return
    try:
        model.load_weights(str(weights.path))
    except Exception as exc:  # Keras raises ValueError/KeyError/OSError for mismatches
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(
            f"{weights.path} does not fit the {weights.component} of this model ({detail}): "
            "pass weights saved from the same model family"
        ) from exc
    import numpy as np

    for variable in model.weights:  # NaN/Inf weights make every output NaN: refused here, named
        value = np.asarray(variable.numpy())
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise WeightsError(f"{weights.path}: weight {variable.path} holds NaN/Inf values; the file is damaged: "
                               "re-download it or pass other weights")


def save_legacy_h5(model, path: Path) -> None:
    """Writes weights in the legacy Keras .h5 layout of keras-cv's released files."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def build_with_weights(family: str, component: str, dims, weights: ResolvedWeights):
    """Builds a component and loads its weights; random weights are seeded per component. Inside
    reuse_keras_builds(), an earlier build of the same model and weights is returned instead."""
    if _reused is None:
        return _build_with_weights(family, component, dims, weights)
    builds = _reused.setdefault(_graph_key(family, component, dims, weights), {})
    key = json.dumps(weights.identity, sort_keys=True)
    if key not in builds:
        builds[key] = _build_with_weights(family, component, dims, weights)
    return builds[key]


def _build_with_weights(family: str, component: str, dims, weights: ResolvedWeights):
    import keras

    from .keras_models import build_component

    taesd = _taesd_of(weights)
    if taesd is not None:
        from .taesd import open_taesd

        return open_taesd(taesd["path"]).build(component, dims.img_height, dims.img_width)
    if weights.identity.get("kind") == "checkpoint":
        from .checkpoint_source import reopen

        return reopen(weights.identity).build(component, dims.img_height, dims.img_width, dims.max_text_length)
    if weights.seed is not None:
        keras.utils.set_random_seed(weights.seed)
    model = build_component(family, component, dims)
    load_into(model, weights)
    return model


def build_for_plan(family: str, component: str, dims, weights: ResolvedWeights):
    """The component's Keras graph for planning (no weights loaded). Inside reuse_keras_builds(),
    any earlier build of the same graph, whatever its weights."""
    if _reused is None:
        return _build_for_plan(family, component, dims, weights)
    builds = _reused.setdefault(_graph_key(family, component, dims, weights), {})
    if not builds:
        builds[None] = _build_for_plan(family, component, dims, weights)  # None: no weights loaded
    return next(iter(builds.values()))


def _taesd_of(weights: ResolvedWeights) -> dict | None:
    """The tiny autoencoder's identity when these weights are one (a checkpoint's taesd= or its own files)."""
    if weights.component not in TAESD_COMPONENTS:
        return None
    identity = weights.identity
    return identity.get("taesd") or (identity if identity.get("kind") == "taesd" else None)


def _build_for_plan(family: str, component: str, dims, weights: ResolvedWeights):
    taesd = _taesd_of(weights)
    if taesd is not None:
        from .taesd import TaesdArch, build

        return build(TaesdArch.from_json(taesd["architecture"]), component, dims.img_height, dims.img_width)[0]
    if weights.identity.get("kind") == "checkpoint":
        from .checkpoint.architecture import Architecture
        from .checkpoint.builders import build

        architecture = Architecture.from_json(weights.identity["architecture"])
        return build(architecture, component, dims.img_height, dims.img_width, dims.max_text_length)[0]
    from .keras_models import build_component

    return build_component(family, component, dims)


# ---------------------------------------------------------------- one build per model in a process

# graph key -> weights identity (None: built for planning only) -> Keras model, while
# reuse_keras_builds() is active; None otherwise.
_reused: dict[tuple, dict[str | None, object]] | None = None


@contextmanager
def reuse_keras_builds():
    """Within the block, this process builds each distinct Keras component once and hands the same
    model to every later build_with_weights / build_for_plan call. The key holds everything a build
    depends on (family, component, dims, a checkpoint's architecture, the weights' identity, Keras'
    dtype policy), so another file, seed or checkpoint still gets its own build; planning, which
    needs only the graph, takes any build of the same graph. For callers that convert, verify or
    measure one model many times in one process (a test suite, a sweep over precisions): building a
    UNet's graph costs more than converting a small one. The models are shared, so callers must not
    change them. Spawned workers (convert's isolate) build their own. Nested blocks share the
    outermost one's builds, which are dropped when it ends."""
    global _reused
    outermost = _reused is None
    if outermost:
        _reused = {}
    try:
        yield
    finally:
        if outermost:
            _reused = None


def _graph_key(family: str, component: str, dims, weights: ResolvedWeights) -> tuple:
    import keras

    checkpoint = weights.identity.get("architecture") if weights.identity.get("kind") == "checkpoint" else None
    if _taesd_of(weights) is not None:
        checkpoint = _taesd_of(weights)["architecture"]
    return (family, component, dims, json.dumps(checkpoint, sort_keys=True), keras.config.dtype_policy().name)


def checkpoint_dims(identity: dict) -> dict:
    """The dims a checkpoint fixes (context width, vocabulary, timestep embedding), for ModelDims."""
    architecture = identity["architecture"]
    return {"context_dim": architecture["unet"]["context_dim"], "vocab_size": architecture["text"]["vocab_size"],
            "timestep_dim": architecture["unet"]["timestep_dim"],
            "guidance_embedding_dim": architecture["unet"].get("time_cond_proj_dim", 0)}


__all__ = [
    "ResolvedWeights",
    "WeightsSource",
    "build_with_weights",
    "from_identity",
    "load_into",
    "parse_weights",
    "resolve",
    "reuse_keras_builds",
    "save_legacy_h5",
]
