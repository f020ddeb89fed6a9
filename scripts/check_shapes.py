"""Prompt adherence of generated pictures of the shapes grammar (sd2tflite/verify/shapes.py): what
the checker reads from the pixels, against the caption. No model, no TensorFlow.

    .venv/bin/python scripts/check_shapes.py out.png [more.png ...] [--caption TEXT]

The caption defaults to the prompt `sd2tflite generate` recorded in each PNG's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sd2tflite.core.errors import SD2TFLiteError, UsageError
from sd2tflite.verify import shapes


def recorded_prompt(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get("parameters")
    if not text:
        raise UsageError(f"{path} records no prompt: pass --caption")
    return json.loads(text)["prompt"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--caption", default=None, help="default: the prompt recorded in the PNG")
    args = parser.parse_args()
    try:
        captions = [args.caption or recorded_prompt(p) for p in args.images]
        result = shapes.adherence([shapes.load_png(p) for p in args.images], captions)
    except (SD2TFLiteError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, check in zip(args.images, result.checks):
        found = check.found.caption if check.found else f"no shape on a {check.found_background} background"
        wrong = [a for a, ok in check.correct.items() if not ok]
        print(f"{path}: asked  '{check.expected.caption}'\n{' ' * len(str(path))}  found  '{found}' "
              f"(fill {check.fill_ratio:.2f}) -> {check.score:.0%}{' (wrong: ' + ', '.join(wrong) + ')' if wrong else ''}")
    if len(result.checks) > 1:
        print(f"adherence {result.score:.3f} {result.per_attribute}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
