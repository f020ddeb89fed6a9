"""int8 calibration data: inputs recorded from Keras pipeline runs, and selective quantization
(operators kept in float). The synthetic stand-ins are runtime/samples.py's, shared with verify."""
