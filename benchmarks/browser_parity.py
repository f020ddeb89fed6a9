"""Does LiteRT.js compute what Python's LiteRT computes? Each file of a set, fed the same inputs.

    python -m benchmarks.browser_parity SET [--accelerator wasm|webgpu] [--runs N] [--record NAME]

Every file the set's manifest lists (the image encoder too) is compiled once in headless Chromium
(LiteRT.js, the same server and install as `sd2tflite serve`) and called --runs times, alternating two
seeded random input sets (A, B, A, B, ...: a second call that differs from the first shows state kept
between calls); Python's LiteRT (the Interpreter generate falls back to) runs the same inputs. Prints
per file and output the largest absolute difference and the share of values that differ; --record
writes benchmarks/records/NAME.json. Needs Chromium and LiteRT.js (docs/browser.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import sys
from pathlib import Path

import numpy as np

from sd2tflite.core.manifest import load_manifest
from sd2tflite.serve.browser import find_litertjs, headless_chromium
from sd2tflite.serve.server import PageServer, Reply

from .records import RECORDS, write_record

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script type="importmap">{"imports": {"@litertjs/wasm-utils": "/litertjs/wasm-utils/dist/index.js"}}</script>
</head><body><pre id="out">running</pre><script type="module">
import {Tensor, compileModel, initLiteRt} from '/assets/litert.js';
const TYPED = {float32: Float32Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array};
const decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)).buffer;
function encode(array) {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
async function main() {
  const jobs = await (await fetch('/api/jobs')).json();
  await initLiteRt();
  const results = [];
  for (const job of jobs) {
    const {model, error} = await compileModel(job.url, job.accelerator);
    if (error) { results.push({error: String(error.message || error)}); continue; }
    const runs = [];
    for (const inputs of job.runs) {
      const feed = {};
      for (const x of inputs) feed[x.name] = new Tensor(new TYPED[x.dtype](decode(x.data)), x.shape);
      const outputs = await model.run(job.signature, feed);
      for (const t of Object.values(feed)) t.delete();
      const answer = {};
      for (const [name, tensor] of Object.entries(outputs)) {
        const onCpu = tensor.accelerator === 'wasm' ? tensor : await tensor.moveTo('wasm');
        const values = onCpu.toTypedArray().slice();
        answer[name] = {dtype: values.constructor.name, data: encode(values)};
        onCpu.delete();
      }
      runs.push(answer);
    }
    model.delete();
    results.push({runs});
  }
  await fetch('/api/result', {method: 'POST', body: JSON.stringify({results})});
}
main().catch((e) => fetch('/api/result', {method: 'POST', body: JSON.stringify({error: String(e.stack || e)})}));
</script></body></html>"""

ARRAY_TYPES = {"Float32Array": np.float32, "Int32Array": np.int32, "Int8Array": np.int8, "Uint8Array": np.uint8}


def seeded_inputs(artifact, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in artifact.inputs:
        shape = tuple(spec.shape)
        if spec.name == "positions":
            inputs[spec.name] = np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape).copy()
        elif np.dtype(spec.dtype).kind in "iu":
            inputs[spec.name] = rng.integers(0, 1000, shape).astype(spec.dtype)
        else:
            scale = 0.5 if spec.name == "context" else 1.0
            inputs[spec.name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return inputs


def in_browser(jobs: list[tuple[Path, str, list[dict]]], accelerator: str, litertjs, timeout: float) -> list:
    server = PageServer(find_litertjs(litertjs))
    answers: queue.Queue = queue.Queue()
    payload = []
    for i, (path, signature, runs) in enumerate(jobs):
        url = f"/files/{i}/{path.name}"
        server.files[url] = path
        payload.append({"url": url, "signature": signature, "accelerator": accelerator, "runs": [
            [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape),
              "data": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()} for k, v in run.items()]
            for run in runs]})
    server.gets["/parity"] = lambda q: Reply(PAGE.encode(), "text/html; charset=utf-8")
    server.gets["/api/jobs"] = lambda q: Reply.json(payload)
    server.posts["/api/result"] = lambda q, body: (answers.put(json.loads(body)), Reply.json({"ok": True}))[1]
    with server, headless_chromium(server.url + "parity", webgpu=accelerator == "webgpu"):
        answer = answers.get(timeout=timeout)
    if "error" in answer:
        raise SystemExit(f"the page failed: {answer['error']}")
    return [None if "error" in r else [{k: np.frombuffer(base64.b64decode(v["data"]), ARRAY_TYPES[v["dtype"]])
                                        for k, v in run.items()} for run in r["runs"]]
            for r in answer["results"]]


def in_python(path: Path, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)
    return {k: np.asarray(v).ravel() for k, v in runner(**inputs).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", type=Path)
    parser.add_argument("--accelerator", choices=["wasm", "webgpu"], default="wasm")
    parser.add_argument("--runs", type=int, default=4, help="calls per compiled file (inputs A, B, A, B, ...)")
    parser.add_argument("--record", default=None)
    parser.add_argument("--litertjs", default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    manifest = load_manifest(args.set)
    rng = np.random.default_rng(0)
    jobs = []
    for artifact in manifest.artifacts:
        a, b = seeded_inputs(artifact, rng), seeded_inputs(artifact, rng)
        jobs.append((args.set / artifact.path, artifact.signature_key, [(a, b)[i % 2] for i in range(args.runs)]))
    answers = in_browser(jobs, args.accelerator, args.litertjs, args.timeout)
    rows = []
    for (path, signature, runs), browser in zip(jobs, answers):
        expected = [in_python(path, signature, runs[i]) for i in range(min(2, len(runs)))]
        for i in range(len(runs)):
            for name, want in expected[i % 2].items():
                got = None if browser is None else browser[i][name]
                row = {"file": path.name, "run": i, "output": name, "accelerator": args.accelerator}
                if got is None:
                    row["error"] = "did not compile"
                else:
                    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
                    row.update(max_abs=float(diff.max()), share_differing=float((diff > 0).mean()),
                               scale=float(np.abs(want).max()))
                rows.append(row)
                print(f"{path.name:28s} call {i} {name:28s} " + (row.get("error") or
                      f"max |diff| {row['max_abs']:.3g} (of {row['scale']:.3g}), {100 * row['share_differing']:.1f} % differ"))
    if args.record:
        write_record(RECORDS / f"{args.record}.json", {"set": manifest.quant, "family": manifest.family,
                                                       "dims": [manifest.model_dims.img_height,
                                                                manifest.model_dims.img_width], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
