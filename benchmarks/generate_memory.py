"""Peak memory of a whole text-to-image run from converted sets, split into anonymous and
file-backed RSS, with every component kept loaded (before) and with each released after its
stage (what `sd2tflite generate` does now). With --weight-cache DIR: released after their stage,
XNNPACK's packed weights in cache files in DIR, twice (the first run writes the files, the second
maps them).

    python -m benchmarks.generate_memory bench-out/sd-v1-{fp32,dynamic}-512 --tag v1-512
    python -m benchmarks.generate_memory bench-out/sd-v1-fp32-512 --tag v1-512-cache --weight-cache CACHE_DIR

Each run is a fresh process running sd2tflite's pipeline on LiteRT; this process samples its
/proc status every 50 ms (RssAnon, RssFile + RssShmem) and the child reports its kernel-tracked
peak (VmHWM). Writes benchmarks/records/generate-memory-TAG.json and .md. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.child import measure
from benchmarks.records import RECORDS, invocation, write_record
from sd2tflite.bench.measure import machine
from sd2tflite.core.manifest import load_manifest

CHILD = """
release, steps, cache = args[0] == "release", int(args[1]), Path(args[2]) if args[2] else None
pipeline = pipeline_of(LiteRTComponents(directory, manifest, release_unused=release, weight_cache=cache))
start = time.perf_counter()
pipeline.generate(GenerateSettings(PROMPT, steps=steps, seed=0))
result = {"seconds": time.perf_counter() - start}
"""


def run(directory: Path, release: bool, steps: int, cache: Path | None = None) -> dict:
    cached = cache is not None and any(cache.glob("*.xnnpack"))
    child = measure(directory, CHILD, ["release" if release else "keep", str(steps), str(cache or "")], "generate")
    manifest = load_manifest(directory)
    files = sum(a.bytes for a in manifest.artifacts if a.component != "image_encoder")  # what text-to-image loads
    return {"set": directory.name, "quant": manifest.quant, "release": release, "steps": steps,
            "file_bytes": files, "peak_rss_bytes": child["vm_hwm_bytes"], "peak_anon_bytes": child["peak_anon_bytes"],
            "peak_file_bytes": child["peak_file_bytes"], "seconds": child["seconds"],
            "weight_cache": None if cache is None else ("mapped" if cached else "written")}


def markdown(rows: list[dict]) -> str:
    gb = 1e9
    lines = ["| set | components | files (GB) | peak RSS (GB) | × files | peak anonymous (GB) | peak file-backed (GB) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        how = "released after their stage" if r["release"] else "all kept loaded"
        how += f", weight cache {r['weight_cache']}" if r.get("weight_cache") else ""
        lines.append(f"| {r['set']} | {how} | "
                     f"{r['file_bytes'] / gb:.2f} | {r['peak_rss_bytes'] / gb:.2f} | "
                     f"{r['peak_rss_bytes'] / r['file_bytes']:.1f} | {r['peak_anon_bytes'] / gb:.2f} | "
                     f"{r['peak_file_bytes'] / gb:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="converted sets")
    parser.add_argument("--tag", required=True, help="result file suffix, e.g. v1-512")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not grow with them)")
    parser.add_argument("--weight-cache", type=Path, default=None,
                        help="folder for XNNPACK weight cache files (emptied first): two released runs with it")
    args = parser.parse_args()
    rows = []
    for directory in args.dirs:
        if args.weight_cache:
            for old in args.weight_cache.glob("*.xnnpack"):
                old.unlink()
        for release in ((True, True) if args.weight_cache else (False, True)):
            rows.append(run(directory, release, args.steps, args.weight_cache))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    RECORDS.mkdir(parents=True, exist_ok=True)
    out = RECORDS / f"generate-memory-{args.tag}"
    write_record(Path(f"{out}.json"), {"machine": machine(), "command": invocation(), "runs": rows})
    Path(f"{out}.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
