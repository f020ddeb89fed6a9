"""The sd2tflite command line: thin Click commands (parse, one library call, print) and the shared
option decorators. Imports nothing heavy at module level: `sd2tflite --help` stays fast."""

from .app import main

__all__ = ["main"]
