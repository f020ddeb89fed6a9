"""The converter (`pip install "sd2tflite[convert]"`): request checking, Keras builders, weights,
the split planner, SavedModel export, the TFLite converter and its recipes, calibration data, and
the orchestration that writes a set. TensorFlow and Keras are imported inside the modules that
need them, never by this package's import."""
