"""Running converted sets on LiteRT: runner, integrity, tokenizer, schedule, pipeline, images,
generate, hf:// downloads. Imports only sd2tflite.core; never TensorFlow, Keras or torch, so
`pip install sd2tflite` (no extra) runs it."""
