"""The browser side: `sd2tflite serve` (a converted set generating in a web page through LiteRT.js,
WebGPU or wasm) and the GPU-placement measurement (LiteRT's GPU accelerator through LiteRT.js
WebGPU in headless Chromium). Standard library and numpy only; imports runtime and core."""
