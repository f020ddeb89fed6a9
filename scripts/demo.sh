#!/usr/bin/env bash
# Fresh machine to converted files in one command: venv, install, convert the built-in tiny model
# (random weights, works offline) to dynamic-range int8, and say where the files are.
set -euo pipefail
EXTRAS= . "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/models/sd-tiny-dynamic}"
"$VENV/bin/sd2tflite" convert --model tiny --quant dynamic -o "$OUT"
echo
echo "Converted files are in $OUT:"
ls -l "$OUT"
echo "manifest: $OUT/manifest.json"
