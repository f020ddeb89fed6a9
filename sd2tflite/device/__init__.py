"""Device compilation: NPU targets, the vendors' compiler libraries, LiteRT's AOT compiler plugin runs
(partition and compile), their reports, and the compiled files recorded beside a converted set.

Imports no TensorFlow: only ai-edge-litert (the AOT tooling ships in its wheel) and core.
"""
