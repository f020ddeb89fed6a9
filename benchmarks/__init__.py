"""Scripts that measure sd2tflite (conversion, generation, memory, kernels, quality) and write dated
records to benchmarks/records/. Run them from the repository root as modules, e.g.
`python -m benchmarks.convert --help`; benchmarks/README.md says what each one measures."""
