"""One measured generation run in a fresh Python process, shared by the generation benchmarks
(few_step, generate_memory): the child runs sd2tflite's pipeline on LiteRT from a converted set and
reports its figures and its kernel-tracked peak RSS (VmHWM); this process samples the child's
anonymous and file-backed RSS every 50 ms meanwhile.

A benchmark passes the body of its child: Python that runs after PRELUDE (which gives it
`directory`, `manifest`, `args`, PROMPT and `pipeline_of(components)`) and leaves its figures in a
dict named `result`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.records import ROOT
from sd2tflite.bench.measure import PeakTreeRSS

VOCAB = ROOT / "tests" / "data" / "bpe_simple_vocab_16e6.txt.gz"

PRELUDE = """
import json, sys, time
from pathlib import Path
from sd2tflite.core.manifest import load_manifest
from sd2tflite.runtime.litert import LiteRTComponents
from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
from sd2tflite.runtime.tokenizer import load_tokenizer

directory, vocab, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
manifest = load_manifest(directory)
PROMPT = "a photograph of an astronaut riding a horse"

def pipeline_of(components):
    tokenizer = load_tokenizer(manifest.family, Path(vocab) if vocab else None)
    return Pipeline(components, manifest.model_dims, tokenizer, manifest.prediction_type)
"""

EPILOGUE = """
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
result["vm_hwm_bytes"] = int(status["VmHWM"].split()[0]) * 1024
print(json.dumps(result))
"""


def measure(directory: Path, body: str, args: list[str], what: str) -> dict:
    """Run BODY on DIRECTORY in a fresh process with ARGS (strings, as `args` there); return its
    `result` plus vm_hwm_bytes, peak_anon_bytes and peak_file_bytes. A failed child stops the
    benchmark with one message naming WHAT and the end of the child's stderr."""
    vocab = str(VOCAB) if VOCAB.is_file() else ""
    cmd = [sys.executable, "-c", PRELUDE + body + EPILOGUE, str(directory), vocab, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakTreeRSS(proc.pid, interval=0.05) as rss:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} on {directory} failed:\n{err[-3000:]}")
    child = json.loads(out.strip().splitlines()[-1])
    return {**child, "peak_anon_bytes": rss.peak_anon, "peak_file_bytes": rss.peak_file}
