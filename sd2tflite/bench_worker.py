"""`python -m sd2tflite.bench_worker`: measures one bench case (JSON on stdin) in this fresh
process and writes the result as one JSON line on stdout. Used by sd2tflite.bench only.

A LiteRT case imports no TensorFlow. Errors become {"error": ..., "exit_code": ...}.
"""

from __future__ import annotations

import json
import sys

from .bench import run_case
from .errors import SD2TFLiteError


def main() -> None:
    case = json.loads(sys.stdin.read())
    try:
        result = run_case(case)
    except SD2TFLiteError as exc:
        result = {"error": str(exc), "exit_code": exc.exit_code}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
