"""`python -m sd2tflite.cli`: the same command line as `sd2tflite`."""

from .app import main

main()
