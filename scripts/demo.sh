#!/usr/bin/env bash
# Fresh machine to a verified, running set in one command: venv, install, convert the built-in tiny
# model (random weights, works offline) to dynamic-range int8, verify it against Keras and keras-cv,
# and generate an image from the .tflite files alone.
set -euo pipefail
EXTRAS=convert . "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/models/sd-tiny-dynamic}"
"$VENV/bin/sd2tflite" convert --model tiny --quant dynamic -o "$OUT"
echo
"$VENV/bin/sd2tflite" verify "$OUT" --json "$OUT/verify.json"
echo
"$VENV/bin/sd2tflite" generate "$OUT" "a photograph of an astronaut riding a horse" --steps 10 \
  -o "${OUT%/}.png" --force
echo
echo "Converted files, manifest.json and verify.json are in $OUT:"
ls -l "$OUT"
echo "image (random weights: noise, not a picture): ${OUT%/}.png"
