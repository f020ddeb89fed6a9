"""What the integrity check costs before `generate` / `bench`, with and without the sha256 cache.

    python -m benchmarks.integrity bench-out/sd-v1-fp32-512

Three passes over one set, in a private cache: every byte (what `verify` and `push-hub` do; the
first pass may read from disk), then the cached path twice (the first of them hashes and
remembers, the second only compares stat results). File signatures are loaded in LiteRT each time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path, help="a converted set's folder")
    directory = parser.parse_args().set
    with tempfile.TemporaryDirectory(prefix="sd2tflite-hash-cache-") as cache:
        os.environ["SD2TFLITE_CACHE"] = cache
        from sd2tflite.runtime.integrity import ensure_intact

        for label, reuse in (("every byte (verify, push-hub)", False), ("cached, first run", True),
                             ("cached, unchanged files", True)):
            start = time.perf_counter()
            manifest = ensure_intact(directory, reuse_hashes=reuse)
            gib = sum(a.bytes for a in manifest.artifacts) / 2**30
            print(f"{label:32} {time.perf_counter() - start:6.2f} s  ({gib:.2f} GiB, {len(manifest.artifacts)} files)")


if __name__ == "__main__":
    main()
