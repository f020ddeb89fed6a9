#!/usr/bin/env bash
# Fresh machine to a verified, running set in one command: venv, install, convert the built-in tiny
# model (trained weights shipped in the package, works offline) to dynamic-range int8, verify it
# against Keras and keras-cv, generate a picture of a prompt from its grammar from the .tflite files
# alone, and check that the picture shows what the prompt says.
set -euo pipefail
EXTRAS=convert . "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/models/sd-tiny-dynamic}"
PROMPT="${PROMPT:-a red circle on a blue background, top left}"
"$VENV/bin/sd2tflite" convert --model tiny --quant dynamic -o "$OUT"
echo
"$VENV/bin/sd2tflite" verify "$OUT" --json "$OUT/verify.json"
echo
"$VENV/bin/sd2tflite" generate "$OUT" "$PROMPT" -o "${OUT%/}.png" --force
echo
"$VENV/bin/python" "$ROOT/scripts/check_shapes.py" "${OUT%/}.png"
echo
echo "Converted files, manifest.json and verify.json are in $OUT:"
ls -l "$OUT"
echo "image (the tiny model draws captions like 'a yellow square on a black background, bottom right'): ${OUT%/}.png"
