"""The output folder of a conversion: one run at a time (a lock), what an earlier run left
(manifest, progress of an interrupted run, work folders, temp files) and whether a folder may be
written into."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import OutputDirError, OutputError, SD2TFLiteError
from ..core.fsutil import is_temp_name
from ..core.manifest import MANIFEST_NAME, VERIFY_REPORT_NAME, Artifact, load_manifest, safe_relative_path

PROGRESS_NAME = ".sd2tflite-progress.json"
WORK_PREFIX = ".sd2tflite-work-"
LOCK_NAME = ".sd2tflite-lock"


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Holds `out_dir` for one conversion: a second run into it is refused, naming the process that
    holds it. An flock, so the kernel releases it when the holder dies (kill -9 included): a crashed
    run leaves no stale lock. The lock file (holding the pid) is removed on the way out."""
    path = out_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write into {out_dir} ({exc.strerror}): choose another --output") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputDirError(f"{out_dir} is being written by another sd2tflite convert (process {holder}): "
                                 "wait for it to finish, or choose another --output") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # releases the lock


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
    ours = {MANIFEST_NAME, PROGRESS_NAME, VERIFY_REPORT_NAME, LOCK_NAME} | {a.path for a in previous_artifacts(out_dir)}
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
    """Removes work folders and temp files of earlier (interrupted) runs; nothing else. Called
    under output_lock, so none of them belongs to a live run."""
    for entry in out_dir.iterdir():
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif is_temp_name(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
