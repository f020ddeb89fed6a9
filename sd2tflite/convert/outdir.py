"""The output folder of a conversion: one run at a time (a lock), what an earlier run left
(manifest, progress of an interrupted run, work folders, temp files) and whether a folder may be
written into."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import OutputDirError, OutputError, SD2TFLiteError
from ..core.fsutil import LOCK_NAME, folder_lock, is_temp_name, sha256_file
from ..core.manifest import (COMPILED_FOLDER, MANIFEST_NAME, VERIFY_REPORT_NAME, Artifact, Manifest,
                             load_manifest, safe_relative_path)

PROGRESS_NAME = ".sd2tflite-progress.json"
WORK_PREFIX = ".sd2tflite-work-"


def output_lock(out_dir: Path):
    """Holds `out_dir` for one conversion (core.fsutil.folder_lock)."""
    return folder_lock(out_dir, "convert", "choose another --output")


@dataclass(frozen=True)
class OutputState:
    """What earlier runs left in an output folder: the finished manifest and the files an
    interrupted run completed. A conversion reads it once, holding output_lock, and passes it on."""

    directory: Path
    manifest: Manifest | None = None  # None: no readable manifest
    in_progress: tuple[Artifact, ...] = ()  # an interrupted run's progress file

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        """Every file an earlier run recorded (finished manifest, then an interrupted run's files)."""
        return (self.manifest.artifacts if self.manifest else ()) + self.in_progress

    def intact(self) -> dict[str, Artifact]:
        """The recorded files still on disk with their recorded sha256, by build key: reusable."""
        recorded = {a.build_key: a for a in self.artifacts}  # the latest record of each key
        return {
            key: a for key, a in recorded.items()
            if (self.directory / a.path).is_file() and sha256_file(self.directory / a.path) == a.sha256
        }

    def join_record(self, file_name: str) -> dict:
        """The join figures the earlier manifest records for `file_name` (a joined UNet reused whole)."""
        record = (self.manifest.split.get("joined") if self.manifest else None) or {}
        return record if record.get("file") == file_name else {"file": file_name}


def read_output_state(out_dir: Path) -> OutputState:
    """The folder's manifest and progress file, each read once (unreadable ones count as absent)."""
    try:
        manifest = load_manifest(out_dir)
    except SD2TFLiteError:
        manifest = None
    in_progress: list[Artifact] = []
    progress = out_dir / PROGRESS_NAME
    if progress.is_file():
        try:
            for item in json.loads(progress.read_text()):
                safe_relative_path(item["path"])
                in_progress.append(Artifact.from_json(item))
        except (ValueError, KeyError, TypeError, SD2TFLiteError):
            pass
    return OutputState(out_dir, manifest, tuple(in_progress))


def check_output_dir(out_dir: Path, force: bool, state: OutputState | None = None) -> None:
    """Refuse a directory that holds anything but an earlier sd2tflite conversion. `state`: the
    folder's state when the caller has read it already."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} is a file, not a directory: choose another --output")
    if not out_dir.exists() or force:
        return
    state = state or read_output_state(out_dir)
    ours = {MANIFEST_NAME, PROGRESS_NAME, VERIFY_REPORT_NAME, LOCK_NAME} | {a.path for a in state.artifacts}
    if state.manifest is not None:  # a set's npu/ is `sd2tflite compile`'s (carried over or cleared: compiled_carry)
        ours.add(COMPILED_FOLDER)
    foreign = sorted(
        name for name in os.listdir(out_dir)
        if name not in ours and not name.startswith(WORK_PREFIX) and not is_temp_name(name)
    )
    if foreign:
        raise OutputDirError(
            f"{out_dir} holds files sd2tflite did not write ({', '.join(foreign[:3])}): "
            "choose an empty directory, or pass --force to write into it anyway"
        )


def make_output_dir(out_dir: Path) -> bool:
    """Creates `out_dir` (and its parents) if missing; True when it did. A file in its place is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} is a file, not a directory: choose another --output")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir} ({exc.strerror}): choose another --output") from exc
    return created


def clean_leftovers(out_dir: Path) -> None:
    """Removes work folders and temp files of earlier (interrupted) runs; nothing else. Called
    under output_lock, so none of them belongs to a live run."""
    for entry in out_dir.iterdir():
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif is_temp_name(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def compiled_carry(state: OutputState, artifacts: list[Artifact]) -> tuple[list[dict], list[str]]:
    """The earlier manifest's `compiled` records (sd2tflite compile's NPU files) that still describe the
    new set: their source file is in `artifacts` with the sha256 it was compiled from. Returns the kept
    records and the compiled files to remove (sources changed or gone, and .tflite files under npu/
    that no kept record lists), as paths relative to the set."""
    if state.manifest is None:
        return [], []
    sources = {a.path: a.sha256 for a in artifacts}
    kept = [r for r in state.manifest.compiled
            if sources.get(r.get("source")) is not None and sources[r["source"]] == r.get("source_sha256")]
    listed = {r["path"] for r in kept}
    folder = state.directory / COMPILED_FOLDER
    stale = [] if not folder.is_dir() else sorted(
        p.relative_to(state.directory).as_posix() for p in folder.rglob("*.tflite")
        if p.is_file() and p.relative_to(state.directory).as_posix() not in listed)
    return kept, stale


def remove_compiled(directory: Path, paths: list[str]) -> None:
    """Removes stale compiled files (compiled_carry) and the target folders they leave empty."""
    for rel in paths:
        (directory / rel).unlink(missing_ok=True)
    folder = directory / COMPILED_FOLDER
    if folder.is_dir():
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()  # only empty ones
        with contextlib.suppress(OSError):
            folder.rmdir()
