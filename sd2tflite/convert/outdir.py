"""The output folder of a conversion: what an earlier run left (manifest, progress of an
interrupted run, work folders, temp files) and whether a folder may be written into."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.errors import OutputDirError, SD2TFLiteError
from ..core.fsutil import is_temp_name
from ..core.manifest import MANIFEST_NAME, VERIFY_REPORT_NAME, Artifact, load_manifest, safe_relative_path

PROGRESS_NAME = ".sd2tflite-progress.json"
WORK_PREFIX = ".sd2tflite-work-"


def previous_artifacts(out_dir: Path) -> list[Artifact]:
    """Artifacts recorded by an earlier run (finished manifest or an interrupted run's progress)."""
    found: list[Artifact] = []
    try:
        found.extend(load_manifest(out_dir).artifacts)
    except SD2TFLiteError:
        pass
    progress = out_dir / PROGRESS_NAME
    if progress.is_file():
        try:
            for item in json.loads(progress.read_text()):
                safe_relative_path(item["path"])
                found.append(Artifact.from_json(item))
        except (ValueError, KeyError, TypeError, SD2TFLiteError):
            pass
    return found


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse a directory that holds anything but an earlier sd2tflite conversion."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} is a file, not a directory: choose another --output")
    if not out_dir.exists() or force:
        return
    ours = {MANIFEST_NAME, PROGRESS_NAME, VERIFY_REPORT_NAME} | {a.path for a in previous_artifacts(out_dir)}
    foreign = sorted(
        name for name in os.listdir(out_dir)
        if name not in ours and not name.startswith(WORK_PREFIX) and not is_temp_name(name)
    )
    if foreign:
        raise OutputDirError(
            f"{out_dir} holds files sd2tflite did not write ({', '.join(foreign[:3])}): "
            "choose an empty directory, or pass --force to write into it anyway"
        )


def clean_leftovers(out_dir: Path) -> None:
    """Removes work folders and temp files of earlier (interrupted) runs; nothing else."""
    for entry in out_dir.iterdir():
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif is_temp_name(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
