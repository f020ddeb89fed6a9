"""The package layout: the import contract, one source for convert's defaults, and the runtime as
its own product (the base install runs generate without TensorFlow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    """pyproject.toml's [tool.importlinter]: layers point down, the runtime never imports TensorFlow."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 kept, 0 broken" in result.stdout


def test_cli_defaults_are_the_library_defaults():
    """`sd2tflite convert` with no options asks for exactly ConvertOptions() (one source of defaults)."""
    from sd2tflite.cli.app import convert
    from sd2tflite.convert.request import ConvertOptions

    parsed = convert.make_context("convert", []).params  # what the command function receives
    defaults = ConvertOptions()
    compared = [name for name in parsed if name in ConvertOptions.__dataclass_fields__]
    assert len(compared) >= 20
    for name in compared:
        value = parsed[name]
        if name == "max_part_bytes":  # None: the command passes the library's constant
            assert value is None
        elif name in ("weights", "loras"):  # repeatable options arrive as tuples
            assert value == () and getattr(defaults, name) in (None, ())
        else:
            assert value == getattr(defaults, name), name


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def base_install(tmp_path_factory):
    """`pip install sd2tflite` (no extra) into a fresh virtual environment."""
    where = tmp_path_factory.mktemp("base-venv")
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    source = where / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "models", "tests", "build",
                                                                  "*.egg-info", "__pycache__"))
    try:
        _pip(python, str(source))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"pip install of the base package failed: {exc.stderr[-2000:]}")
    return python


def test_base_install_has_no_tensorflow(base_install):
    code = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'keras_cv', 'torch') if u.find_spec(m)])"
    out = subprocess.run([str(base_install), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_base_install_generates_from_a_set_the_full_install_converted(base_install, tiny_sets, tmp_path):
    from PIL import Image

    cli = base_install.with_name("sd2tflite")
    env = {**os.environ, "SD2TFLITE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "tiny.png"
    result = subprocess.run([str(cli), "generate", str(tiny_sets["dynamic"]), "a red circle", "--steps", "2",
                             "-o", str(out), "-q"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == (128, 128)
    # The same image as the full install draws: the runtime does not depend on what is installed.
    from sd2tflite.runtime.generate import GenerateRequest, generate
    from sd2tflite.runtime.pipeline import GenerateSettings

    here = tmp_path / "here.png"
    generate(GenerateRequest(tiny_sets["dynamic"], here, GenerateSettings("a red circle", steps=2)))
    assert Image.open(here).tobytes() == Image.open(out).tobytes()


@pytest.mark.parametrize("command", [["convert", "--model", "tiny"], ["verify", "."]])
def test_base_install_names_the_extra_for_the_converter(base_install, command, tmp_path):
    cli = base_install.with_name("sd2tflite")
    result = subprocess.run([str(cli), *command], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'pip install "sd2tflite[convert]"' in lines[0], \
        result.stderr
    assert not list(tmp_path.iterdir())  # nothing written
