#!/usr/bin/env bash
# Fresh machine to test results in one command: venv, install with test extras, run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m slow -n 0 for the full-size tests, one at a time:
# each needs ~10 GB). The suite runs on every core (pytest-xdist), a test file per worker, so a file's
# module fixtures are built once.
set -euo pipefail
EXTRAS=test . "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
# The Qualcomm NPU compiler's libraries for tests/test_compile.py: the npu extra's onnxruntime-qnn wheel
# (95 MB, seconds) without onnxruntime itself, which the compiler does not load. With
# SD2TFLITE_REQUIRE_NPU the NPU tests fail, not skip, when the libraries are missing.
"$VENV/bin/python" -m pip install --quiet --no-deps "onnxruntime-qnn==2.6.0" >&2
export SD2TFLITE_REQUIRE_NPU=1
set +e
"$VENV/bin/python" -m pytest -q -n auto --dist loadfile "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$code"
