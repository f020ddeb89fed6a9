"""Does a set run in the browser page, and what does it take? `sd2tflite serve`'s page in headless
Chromium (tests/browser/run_page.mjs), one run, with the peak memory of Chromium's processes.

    python -m benchmarks.browser_fit SET [--steps 2] [--accelerator wasm] [--tag v1-256-dynamic]
        [--ignore-estimate]

Prints what the page did (done / stopped and why), the time per stage, each file's worker and wasm
heap as the page reports them, the server's heap estimate per file, and Chromium's peak memory:
the sum of PSS over its processes (shared pages counted once) and the largest single process's RSS
(the renderer, which holds the page and its workers' heaps), sampled every 0.25 s. --ignore-estimate
lifts the server's up-front refusal, to see what LiteRT.js itself does with a set the estimate
refuses. The page's picture is compared with `sd2tflite generate`'s from the same prompt, seed and
steps (largest and mean level difference; --no-compare skips it). --tag writes
benchmarks/records/browser-fit-TAG.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

from benchmarks.records import RECORDS, write_record

RUN_PAGE = Path(__file__).resolve().parents[1] / "tests" / "browser" / "run_page.mjs"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _memory(pid: int) -> tuple[int, int, str]:
    """(PSS, RSS) in bytes of one process, and its Chromium --type (browser when none)."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Pss", "Rss"):
                kib = int(value.split()[0]) * 1024
                pss, rss = (kib, rss) if key == "Pss" else (pss, kib)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()  # Chromium rewrites its argv
    except (OSError, ValueError):
        return 0, 0, ""
    if not args or b"chrom" not in Path(args[0].decode(errors="replace")).name.encode():
        return pss, rss, "node" if args and b"node" in args[0] else ""
    kind = next((a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--type=")), "browser")
    return pss, rss, kind


class PeakMemory:
    """Samples a process tree until stopped: peak total PSS of Chromium's processes, peak RSS per kind."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every = pid, every
        self.peak_pss = 0
        self.peak_rss_by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in _descendants(self.pid):
                pss, rss, kind = _memory(p)
                if kind in ("", "node"):
                    continue
                total += pss
                self.peak_rss_by_kind[kind] = max(self.peak_rss_by_kind.get(kind, 0), rss)
            self.peak_pss = max(self.peak_pss, total)
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def chromium_version() -> str:
    from sd2tflite.serve.browser import find_chromium

    try:
        return subprocess.run([str(find_chromium()), "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def measure(set_dir: Path, steps: int, accelerator: str, timeout: int, litertjs: str | None,
            ignore_estimate: bool, prompt: str, seed: int, compare: bool = True) -> dict:
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.serve import app

    if ignore_estimate:
        app.WASM_HEAP_BYTES = 1 << 62
    server = app.make_server(app.ServeRequest(set_dir, port=0, litertjs=litertjs))
    manifest = load_manifest(set_dir)
    estimate = _estimate(manifest)  # with the real 2 GiB limit
    query = "&".join(f"{k}={quote(str(v))}" for k, v in
                     {"run": 1, "steps": steps, "seed": seed, "prompt": prompt, "sampler": "ddim",
                      "accelerator": accelerator}.items())
    command = ["node", str(RUN_PAGE), f"{server.url}?{query}", "--timeout", str(timeout)]
    command += ["--webgpu"] if accelerator == "webgpu" else []
    started = time.perf_counter()
    with server:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with PeakMemory(process.pid) as memory:
            out, err = process.communicate(timeout=timeout + 120)
    wall = time.perf_counter() - started
    try:
        page = json.loads(out)
    except ValueError:
        page = {"status": "harness-error", "error": (err or out)[-2000:]}
    picture = _page_pixels(page)
    for key in ("pixels", "context", "progress"):
        page.pop(key, None)
    return {
        "set": {"family": manifest.family, "quant": manifest.quant,
                "size": f"{manifest.model_dims.img_width}x{manifest.model_dims.img_height}",
                "files": {a.path: a.bytes for a in manifest.artifacts}},
        "steps": steps, "accelerator": accelerator, "estimate_ignored": ignore_estimate,
        "estimate": estimate, "status": page.get("status"), "error": page.get("error"),
        "timings_seconds": page.get("timings"), "placement": page.get("placement"),
        "chromium_peak_pss_bytes": memory.peak_pss, "chromium_peak_rss_bytes_by_process": memory.peak_rss_by_kind,
        "wall_seconds": round(wall, 1), "console_tail": page.get("console", [])[-12:],
        "against_generate": _against_generate(set_dir, picture, prompt, steps, seed) if compare and picture is not None
        else None,
    }


def _page_pixels(page: dict):
    import base64

    import numpy as np

    if not page.get("pixels"):
        return None
    raw = np.frombuffer(base64.b64decode(page["pixels"]), np.uint8)
    return raw.reshape(page["height"], page["width"], 4)[..., :3].astype(int)


def _against_generate(set_dir: Path, picture, prompt: str, steps: int, seed: int) -> dict:
    """`sd2tflite generate` with the same prompt, seed and steps: the page's largest / mean level difference."""
    import sys
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "generate.png"
        command = [sys.executable, "-m", "sd2tflite.cli", "generate", str(set_dir), prompt, "--steps", str(steps),
                   "--seed", str(seed), "--sampler", "ddim", "-o", str(out), "-q"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return {"error": (done.stderr or done.stdout).strip()[-500:]}
        reference = np.asarray(Image.open(out).convert("RGB")).astype(int)
    difference = np.abs(picture - reference)
    return {"largest_level_difference": int(difference.max()), "mean_level_difference": round(float(difference.mean()), 4),
            "generate_seconds": round(seconds, 1)}


def _estimate(manifest) -> dict:
    from sd2tflite.serve import app

    limit = app.WASM_HEAP_BYTES
    app.WASM_HEAP_BYTES = 2 << 30
    try:
        fit = app.browser_fit(manifest)
    finally:
        app.WASM_HEAP_BYTES = limit
    return {"fits": fit["fits"], "reason": fit["reason"], "heap_per_file_byte": fit["heap_per_file_byte"],
            "heap_bytes_by_file": {f["file"]: f["heap_bytes"] for f in fit["files"]}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--accelerator", choices=["wasm", "webgpu"], default="wasm")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--litertjs", default=None, help="folder holding node_modules/@litertjs (default: tests/browser)")
    parser.add_argument("--ignore-estimate", action="store_true")
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--weights", default="random weights", help="what the set's weights are, for the record")
    parser.add_argument("--no-compare", action="store_true", help="skip the run of `sd2tflite generate` whose "
                        "picture the page's is compared with")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    litertjs = args.litertjs or str(RUN_PAGE.parent)
    result = measure(args.set, args.steps, args.accelerator, args.timeout, litertjs, args.ignore_estimate,
                     args.prompt, args.seed, compare=not args.no_compare)
    result = {"what": f"sd2tflite serve's page on {result['set']['family']} {result['set']['quant']} "
                      f"{result['set']['size']} ({args.weights}), {args.steps} ddim steps on {args.accelerator}, "
                      f"headless {chromium_version()}, one Web Worker (one wasm heap) per model file",
              **result}
    gib = 2 ** 30
    print(f"{result['what']}\n  page: {result['status']}" + (f" ({result['error']})" if result["error"] else ""))
    for key, value in (result["timings_seconds"] or {}).items():
        print(f"  {key:<22} {value:8.2f} s")
    for row in result["placement"] or []:
        print(f"  worker {row.get('worker')}: {row['file']:<28} heap {row.get('heapBytes', 0) / 2**20:8.0f} MiB "
              f"(estimated {result['estimate']['heap_bytes_by_file'].get(row['file'], 0) / 2**20:,.0f} MiB)")
    print(f"  Chromium peak: {result['chromium_peak_pss_bytes'] / gib:.2f} GiB PSS over its processes; "
          + ", ".join(f"{k} {v / gib:.2f} GiB RSS" for k, v in result["chromium_peak_rss_bytes_by_process"].items()))
    print(f"  wall {result['wall_seconds']} s")
    if result["against_generate"]:
        print(f"  against sd2tflite generate (same seed): {result['against_generate']}")
    if args.tag:
        path = RECORDS / f"browser-fit-{args.tag}.json"
        write_record(path, result)
        print(f"record: {path}")


if __name__ == "__main__":
    main()
