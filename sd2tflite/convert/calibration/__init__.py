"""int8 calibration data: synthetic stand-ins, inputs recorded from Keras pipeline runs, and
selective quantization (operators kept in float)."""
