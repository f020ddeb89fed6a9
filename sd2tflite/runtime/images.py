"""Reading input images and masks, writing PNGs with their settings. Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UsageError
from ..core.fsutil import atomic_write


def _open(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist: check the path") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{what} {path} is not a readable image ({exc}): pass a PNG or JPEG") from exc


def load_image(path: Path, height: int, width: int, resize: bool) -> tuple[np.ndarray, str | None]:
    """(image as (h, w, 3) float32 in [-1, 1], a note if it was resized)."""
    from PIL import Image

    image = _open(path, "--image").convert("RGB")
    note = None
    if image.size != (width, height):
        if not resize:
            raise UsageError(
                f"--image {path} is {image.width}x{image.height}, this set is built for "
                f"{width}x{height}: pass --resize or resize it"
            )
        note = f"resized {path} from {image.width}x{image.height} to {width}x{height}"
        image = image.resize((width, height), Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    return pixels / 127.5 - 1.0, note


def load_mask(path: Path, image_path: Path, height: int, width: int, resize: bool) -> np.ndarray:
    """(h, w) float32: 1 where the image is repainted (white in the mask file), 0 where kept."""
    from PIL import Image

    mask = _open(path, "--mask").convert("L")
    source = _open(image_path, "--image")
    if mask.size != source.size:
        raise UsageError(
            f"--mask {path} is {mask.width}x{mask.height} but --image {image_path} is "
            f"{source.width}x{source.height}: make the mask the size of the image"
        )
    if mask.size != (width, height) and resize:
        mask = mask.resize((width, height), Image.NEAREST)
    return (np.asarray(mask, dtype=np.float32) > 127).astype(np.float32)


def output_paths(path: Path, count: int) -> list[Path]:
    """out.png for one image; out.png, out-1.png, ... for a batch."""
    return [path if i == 0 else path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def save_png(path: Path, pixels: np.ndarray, text: dict[str, str]) -> None:
    """Writes atomically, with `text` as PNG tEXt chunks (prompt, seed, settings)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_write(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
