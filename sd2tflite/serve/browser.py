"""Where the browser pieces are: LiteRT.js's files (from npm, no bundler) and a Chromium to drive
headless. Nothing here is downloaded: a missing piece is named with the one command that installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import UsageError
from ..core.fsutil import cache_root

LITERTJS_VERSION = "2.5.3"  # the @litertjs/core release the page is written and tested against
LITERTJS_ENV = "SD2TFLITE_LITERTJS"
CHROMIUM_ENV = "SD2TFLITE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def default_litertjs_dir() -> Path:
    return cache_root() / "litertjs"


def litertjs_install_command(prefix: Path | None = None) -> str:
    prefix = prefix or default_litertjs_dir()
    return (f"npm install --prefix {prefix} @litertjs/core@{LITERTJS_VERSION} "
            f"@litertjs/wasm-utils@{LITERTJS_VERSION}")


@dataclass(frozen=True)
class LiteRtJs:
    """The two npm packages the page imports: core (dist/ and wasm/) and wasm-utils (dist/)."""

    core: Path
    wasm_utils: Path
    version: str


def find_litertjs(where: str | Path | None = None) -> LiteRtJs:
    """LiteRT.js in `where` (a folder holding node_modules/, or node_modules itself), else
    $SD2TFLITE_LITERTJS, else sd2tflite's cache folder; UsageError naming the install command."""
    given = where or os.environ.get(LITERTJS_ENV)
    candidates = [Path(given)] if given else [default_litertjs_dir()]
    for base in candidates:
        for modules in (base / "node_modules", base):
            core, utils = modules / "@litertjs" / "core", modules / "@litertjs" / "wasm-utils"
            if (core / "dist" / "index.js").is_file() and (core / "wasm").is_dir() \
                    and (utils / "dist" / "index.js").is_file():
                try:
                    version = json.loads((core / "package.json").read_text()).get("version", "?")
                except (OSError, ValueError):
                    version = "?"
                return LiteRtJs(core, utils, str(version))
    where_text = f"{candidates[0]}" + ("" if given else " (the default)")
    return_hint = litertjs_install_command(Path(given) if given else None)
    raise UsageError(f"LiteRT.js is not installed in {where_text}: run `{return_hint}` "
                     f"(or pass --litertjs DIR holding node_modules/@litertjs)")


def find_chromium(executable: str | Path | None = None) -> Path:
    """A Chromium (or Chrome) executable: the one given, $SD2TFLITE_CHROMIUM, or one on PATH."""
    given = executable or os.environ.get(CHROMIUM_ENV)
    if given:
        path = shutil.which(str(given))
        if path is None:
            raise UsageError(f"Chromium {given} is not an executable: pass the browser's path")
        return Path(path)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return Path(path)
    raise UsageError("no Chromium found on PATH: install it (Debian/Ubuntu: apt-get install chromium) "
                     f"or set {CHROMIUM_ENV} to its path")


def chromium_flags(user_data_dir: Path, webgpu: bool = True) -> list[str]:
    """Headless flags that work in containers (no sandbox, no GPU process, no network chatter);
    WebGPU then runs on SwiftShader: placement is real, speed is not."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}"]
    if webgpu:
        flags.append("--enable-unsafe-webgpu")
    return flags


@contextmanager
def headless_chromium(url: str, executable: str | Path | None = None, webgpu: bool = True) -> Iterator[subprocess.Popen]:
    """Chromium showing `url` headless, with a fresh profile; stopped (and the profile removed) on exit."""
    binary = find_chromium(executable)
    with tempfile.TemporaryDirectory(prefix="sd2tflite-chromium-") as profile:
        process = subprocess.Popen([str(binary), *chromium_flags(Path(profile), webgpu), url],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
