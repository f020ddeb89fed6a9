"""Seconds per image and peak RSS of few-step runs against today's default, each with the full VAE
decoder and with the tiny one (TAESD), from one converted set per precision that holds text_encoder,
diffusion, decoder and taesd_decoder:

    sd2tflite convert --model v1 --weights random:0 --quant dynamic --img-height 512 --img-width 512 \\
        --components text_encoder,diffusion,decoder,taesd_decoder -o bench-out/sd-v1-dynamic-512-taesd
    sd2tflite convert --model v1 --weights random:0 --quant int8 --img-height 512 --img-width 512 \\
        --components text_encoder,diffusion,decoder,taesd_decoder --calibration synthetic \\
        --calibration-samples 4 -o bench-out/sd-v1-int8-512-taesd
    python -m benchmarks.few_step bench-out/sd-v1-dynamic-512-taesd bench-out/sd-v1-int8-512-taesd --tag v1-512

Several sets are timed in one run and written to one record, with each set's conversion command
(from its manifest); the "× default" column divides by the same set's 25-step CFG image.

Cases: 25-step CFG ddim (two UNet calls a step: today's default), 4-step lcm at guidance 1 (no
unconditional call: what an LCM-LoRA run does; an LCM UNet's guidance embedding adds one 256x320
matrix, 0.01 % of the UNet), 1-step euler trailing at guidance 0 (SD-Turbo's recommendation; the v1
graph stands in for SD 2.1's, which has the same widths). Random weights: the images are noise, the
work is the real one. Each case runs in a fresh process (sd2tflite's pipeline on LiteRT, each
component released after its stage, as `generate` runs) after one untimed warm-up image in the same
process (the same case at 1 step); seconds per stage come from timing every component call. Peak RSS is the child's kernel-
tracked peak (VmHWM) over warm-up and timed image; anonymous and file-backed peaks are sampled.
Writes benchmarks/records/few-step-TAG.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.child import measure
from benchmarks.records import RECORDS, invocation, write_record
from sd2tflite.bench.measure import machine
from sd2tflite.core.manifest import load_manifest

CASES = {  # name -> GenerateSettings fields (the cheap ones first)
    "lcm-4-no-cfg": {"sampler": "lcm", "steps": 4, "guidance": 1.0},
    "euler-trailing-1-g0": {"sampler": "euler", "steps": 1, "guidance": 0.0, "spacing": "trailing"},
    "ddim-25-cfg7.5": {"sampler": "ddim", "steps": 25, "guidance": 7.5},
}

CHILD = """
from collections.abc import Mapping
from sd2tflite.runtime.tiny_vae import choose_vae

vae, settings = args[0], json.loads(args[1])
seconds = {}

class Timed(Mapping):
    def __init__(self, inner):
        self.inner = inner
    def __getitem__(self, name):
        fn = self.inner[name]
        def timed(**inputs):
            start = time.perf_counter()
            out = fn(**inputs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            return out
        return timed
    def __iter__(self):
        return iter(self.inner)
    def __len__(self):
        return len(self.inner)
    def release(self, name):
        self.inner.release(name)

pipeline = pipeline_of(Timed(choose_vae(LiteRTComponents(directory, manifest), vae)))
pipeline.generate(GenerateSettings(PROMPT, seed=0, **{**settings, "steps": 1}))  # warm-up: loads, packing
seconds.clear()
start = time.perf_counter()
pipeline.generate(GenerateSettings(PROMPT, seed=0, **settings))
result = {"seconds": time.perf_counter() - start, "stages": seconds}
"""


def run(directory: Path, case: str, vae: str) -> dict:
    child = measure(directory, CHILD, [vae, json.dumps(CASES[case])], f"{case} ({vae} VAE)")
    manifest = load_manifest(directory)
    return {"set": directory.name, "quant": manifest.quant, "case": case, "settings": CASES[case], "vae": vae,
            "seconds": child["seconds"], "stages": child["stages"], "peak_rss_bytes": child["vm_hwm_bytes"],
            "peak_anon_bytes": child["peak_anon_bytes"], "peak_file_bytes": child["peak_file_bytes"]}


NOTE = ("Random weights: the images are noise, the work is the real one. The int8 sets' calibration "
        "(see each set's convert_command) only sets quantization ranges, which do not change the speed of "
        "the int8 kernels, so synthetic calibration is enough to time them.")


def set_entry(directory: Path) -> dict:
    """How a set was made (the conversion command from its manifest), for the record."""
    manifest = load_manifest(directory)
    return {"set": directory.name, "quant": manifest.quant, "weights": manifest.weights,
            "convert_command": manifest.command, "components": sorted({a.component for a in manifest.artifacts})}


def markdown(rows: list[dict]) -> str:
    lines = [("| precision | case | VAE decoder | s / image | × default | UNet s | decoder s | text s | peak RSS GB |"
              " anon GB | file GB |"), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["quant"]: r["seconds"] for r in rows if r["case"].startswith("ddim") and r["vae"] == "full"}
    for r in rows:
        st = r["stages"]
        dec = st.get("decoder", 0.0)
        ratio = base.get(r["quant"], 0) / r["seconds"] if base.get(r["quant"]) else float("nan")
        lines.append(f"| {r['quant']} | {r['case']} | {'TAESD' if r['vae'] == 'tiny' else 'full VAE'} | "
                     f"{r['seconds']:.2f} | 1/{ratio:.1f} | {st.get('diffusion', 0.0):.2f} | {dec:.2f} | "
                     f"{st.get('text_encoder', 0.0):.2f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
                     f"{r['peak_anon_bytes'] / 1e9:.2f} | {r['peak_file_bytes'] / 1e9:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="converted sets with text_encoder, diffusion, decoder, "
                        "taesd_decoder")
    parser.add_argument("--tag", required=True, help="result file suffix, e.g. v1-512")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names (default: all)")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    rows = []
    RECORDS.mkdir(parents=True, exist_ok=True)
    out = RECORDS / f"few-step-{args.tag}"
    sets = [set_entry(d) for d in args.dirs]
    for directory in args.dirs:
        for case in cases:
            for vae in ("full", "tiny"):
                rows.append(run(directory, case, vae))
                print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                # written after every run: an interrupted benchmark keeps what it measured
                write_record(Path(f"{out}.json"), {"machine": machine(), "command": invocation(), "note": NOTE,
                                                    "sets": sets, "runs": rows})
                Path(f"{out}.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
