"""Plain data and helpers every other part of sd2tflite shares: the component and precision
registries, the manifest, errors, atomic file writes, metrics. numpy + stdlib only; imports nothing
else of the package."""
