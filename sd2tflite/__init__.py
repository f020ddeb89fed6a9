"""sd2tflite: KerasCV Stable Diffusion -> TFLite (LiteRT), verified, runnable, publishable.

Importing the package imports no TensorFlow; heavy modules import it lazily.
"""

__version__ = "0.1.0"
