"""`sd2tflite verify`: the one Keras reference (Keras components, keras-cv's own pipeline), the
checks (integrity, per-component parity, end to end), the report and the int8 quality report."""
