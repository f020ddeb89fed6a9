"""Files the user names on the command line (images, latents, reports, plots): checked before
any work, so a long run never ends in a refused or impossible write. An existing file is
replaced only with --force, or when it is an earlier output of the same kind (re-running
`verify --json DIR/verify.json` just refreshes the report)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

from .errors import UsageError


class NewFile(NamedTuple):
    option: str  # as the user typed it, e.g. "--json"
    path: Path | None  # None: the option was not given
    earlier_output: Callable[[Path], bool] | None = None  # True: ours to replace without --force
    kind: str = ""  # what earlier_output recognises, for the error message


def check_new_files(files: list[NewFile], force: bool) -> None:
    """Every named output can be written, and no two outputs of one command are the same file."""
    seen: dict[str, str] = {}
    for f in files:
        if f.path is None:
            continue
        key = os.path.realpath(f.path)
        if key in seen:
            raise UsageError(f"{seen[key]} and {f.option} both name {f.path}: give them different files")
        seen[key] = f.option
        if f.path.is_dir():
            raise UsageError(f"{f.option} {f.path} is a directory: name a file")
        if f.path.exists() and not force and not (f.earlier_output and f.earlier_output(f.path)):
            what = f" and is not {f.kind}" if f.kind else ""
            raise UsageError(f"{f.path} exists{what}: choose another {f.option}, or pass --force to overwrite it")
        if not f.path.parent.is_dir():
            raise UsageError(f"{f.path.parent} does not exist: create it first")
        if not os.access(f.path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"{f.path.parent} is not writable: choose another {f.option}")


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """Recognises a JSON report of ours by its top-level keys."""

    def check(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return check


def png_with_text(marker: bytes) -> Callable[[Path], bool]:
    """Recognises a PNG we drew by a text chunk written before the image data."""

    def check(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            return False
        return head.startswith(b"\x89PNG") and marker in head.split(b"IDAT", 1)[0]

    return check
