"""Choosing the autoencoder at generate time: the full VAE (`decoder`, `image_encoder`) or the tiny one
(TAESD: `taesd_decoder`, `taesd_encoder`, converted into the same set with --components and
--weights ...,taesd=PATH). The pipeline keeps calling `decoder` / `image_encoder`; with `tiny` those
names are served by the TAESD files, which take and give the same tensors. No TensorFlow."""

from __future__ import annotations

from typing import Iterator, Mapping

from ..core.errors import UsageError
from ..core.registry import TINY_VAE

VAE_CHOICES = ("full", "tiny")


class WithTinyVae(Mapping):
    """A component mapping whose `decoder` / `image_encoder` are the tiny autoencoder's (when the set has
    them); releasing a name releases what serves it."""

    def __init__(self, components: Mapping):
        self.components = components
        self.names = set(iter(components))  # the set's components (iterating loads nothing)

    def _name(self, component: str) -> str:
        tiny = TINY_VAE.get(component)
        return tiny if tiny is not None and tiny in self.names else component

    def __getitem__(self, component: str):
        return self.components[self._name(component)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.components)

    def __len__(self) -> int:
        return len(self.components)

    def release(self, component: str) -> None:
        release = getattr(self.components, "release", None)
        if release is not None:
            release(self._name(component))


def check_vae(vae: str, set_components: list[str] | tuple[str, ...], needs_encoder: bool = False) -> None:
    """One-line refusals for --vae before anything loads."""
    if vae not in VAE_CHOICES:
        raise UsageError(f"--vae {vae!r}: choose {' or '.join(VAE_CHOICES)}")
    if vae == "tiny":
        wanted = [TINY_VAE["decoder"]] + ([TINY_VAE["image_encoder"]] if needs_encoder else [])
        missing = [c for c in wanted if c not in set_components]
        if missing:
            raise UsageError(f"--vae tiny: this set has no {' or '.join(missing)}; convert it into the set with "
                             f"--components {','.join(missing)} --weights ...,taesd=PATH (a TAESD folder or file), "
                             "or use --vae full")


def choose_vae(components: Mapping, vae: str) -> Mapping:
    """The components the pipeline should call for `--vae full|tiny` (checked by check_vae first)."""
    return WithTinyVae(components) if vae == "tiny" else components
