"""Full-size inference benchmark: `sd2tflite bench` over converted sets, vs keras-cv, plus the
conversion cost recorded by benchmarks/convert.py, in one Markdown table.

    python -m benchmarks.generate bench-out/sd-v1-{fp32,fp16,dynamic,int8}-256 --tag v1-256
    python -m benchmarks.generate --convert-only          # the conversion rows alone

Writes benchmarks/records/bench-TAG.json (the bench report, conversion cases added), bench-TAG.md
and bench-TAG.png. Run it on a quiet machine: every case is timed, and Keras needs the full model in
RAM.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.records import RECORDS, ROOT, write_record
from sd2tflite.bench.report import conversion_case, markdown, validate_bench_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", help="converted sets to benchmark")
    parser.add_argument("--tag", default="v1", help="result file suffix, e.g. v1-256")
    parser.add_argument("--threads", default=None, help="e.g. 1,2 (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-keras", action="store_true", help="LiteRT only")
    parser.add_argument("--convert", default="convert-*.json",
                        help="glob under benchmarks/records for conversion rows ('' for none)")
    parser.add_argument("--convert-only", action="store_true", help="only the conversion rows")
    args = parser.parse_args()
    RECORDS.mkdir(parents=True, exist_ok=True)
    out = RECORDS / f"bench-{args.tag}"

    cases = []
    if not args.convert_only:
        if not args.dirs:
            parser.error("give the converted sets' directories (or --convert-only)")
        # A fresh report path: a run that fails outright must not leave an earlier report to be read.
        partial = Path(f"{out}.partial.json")
        partial.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sd2tflite.cli", "bench", *args.dirs, "--repeats", str(args.repeats),
               "--steps", str(args.steps), "--json", str(partial), "--plot", f"{out}.png", "--force"]
        cmd += [] if args.no_keras else ["--compare", "keras"]
        cmd += ["--threads", args.threads] if args.threads else []
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        if not partial.exists():
            raise SystemExit(f"bench failed with exit code {code}")
        report = json.loads(partial.read_text())
        partial.unlink()
        cases = report["cases"]
        if report.get("failures"):
            print(f"{len(report['failures'])} case(s) failed; see `failures` in {out}.json", file=sys.stderr)
    conversions = [conversion_case(json.loads(p.read_text()))
                   for p in sorted(RECORDS.glob(args.convert))] if args.convert else []
    if not args.convert_only:
        report["cases"] = cases + conversions
        validate_bench_json(report)
        write_record(Path(f"{out}.json"), report)
    table = markdown(cases + conversions)
    Path(f"{out}.md").write_text(table + "\n")
    print(table)
    print(f"(written to {out.relative_to(ROOT)}.json / .md / .png)", file=sys.stderr)


if __name__ == "__main__":
    main()
