// One model file in its own Web Worker: its own LiteRT.js instance and so its own wasm heap (2 GiB at
// most each), so a UNet cut into parts (`convert --max-part-bytes`) is not held in one heap.
// A classic worker, not a module worker: LiteRT.js's wasm loader calls importScripts(), which module
// workers refuse. LiteRT.js itself comes by import(); the server points its bare import of
// `@litertjs/wasm-utils` at the served copy (workers take no import map).
// Messages: {id, op: 'load', part, accelerator} | {id, op: 'run', inputs} | {id, op: 'release'};
// answers: {id, ok: true, result} or {id, ok: false, error}.
'use strict';

let lib = null;
let model = null;
let part = null;

const TYPED = {float32: Float32Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array, int64: BigInt64Array};

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function load({part: given, accelerator}) {
  part = given;
  lib = await import('/assets/litert.js');
  // Emscripten looks for the .wasm beside the script that loaded it, in a worker the worker's own
  // script: LiteRT.js's wasm loader passes self.Module to the module factory, so say where it is.
  self.Module = {locateFile: (name) => `/litertjs/core/wasm/${name}`};
  await lib.initLiteRt();
  const response = await fetch(part.url);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `${part.path}: HTTP ${response.status}`);
  }
  let bytes = new Uint8Array(await response.arrayBuffer());
  if (crypto.subtle && (await sha256Hex(bytes)) !== part.sha256) {
    throw new Error(`${part.path}: sha256 differs from the manifest's (modified or cut short on the way): reload`);
  }
  const {model: compiled, error, lines, placement, allocationFailed} = await lib.compileModel(bytes, accelerator);
  bytes = null;
  if (error) throw new Error(`${part.path} does not load in LiteRT.js on ${accelerator}: ${error.message || error}`);
  if (allocationFailed) {
    compiled.delete();
    throw new Error(`${part.path}: LiteRT.js could not allocate its tensors (this file's 2 GiB wasm heap is full): ` +
                    'the file is too large for the browser; convert the set smaller (--max-part-bytes for the UNet, ' +
                    '256x256, --quant dynamic)');
  }
  model = compiled;
  return {gpuOps: placement.gpuOps, rejected: placement.rejected.length,
          notFullyCompiled: lines.some((l) => /not fully compiled/.test(l)), heapBytes: lib.heapBytes()};
}

async function run({inputs}) {
  const feed = {};
  for (const spec of part.inputs) {
    const Typed = TYPED[spec.dtype] || Float32Array;
    const data = inputs[spec.name] instanceof Typed ? inputs[spec.name] : Typed.from(inputs[spec.name]);
    feed[spec.name] = new lib.Tensor(data, spec.shape);
  }
  const logged = lib.logLines.length;
  const outputs = await model.run(part.signature, feed);
  for (const t of Object.values(feed)) t.delete();
  // LiteRT.js may allocate a graph's tensors at its first call, not when it loads: a failure there
  // is only logged, and the outputs are garbage (measured: a v1 int8 UNet at 512x512).
  if (lib.allocationFailed(lib.logLines.slice(logged))) {
    for (const t of Object.values(outputs)) t.delete();
    throw new Error(`${part.path}: LiteRT.js could not allocate its tensors when it ran (this file's 2 GiB wasm ` +
                    'heap is full): the file is too large for the browser; convert the set smaller (--max-part-bytes ' +
                    'for the UNet, 256x256)');
  }
  const values = {};
  for (const [name, tensor] of Object.entries(outputs)) {
    const onCpu = tensor.accelerator === 'wasm' ? tensor : await tensor.moveTo('wasm');
    values[name] = onCpu.toTypedArray().slice();
    onCpu.delete();
  }
  return {outputs: values, heapBytes: lib.heapBytes()};
}

self.onmessage = async ({data}) => {
  const {id, op} = data;
  try {
    let result = null;
    if (op === 'load') result = await load(data);
    else if (op === 'run') result = await run(data);
    else if (op === 'release' && model) {
      model.delete();
      model = null;
    }
    const transfer = result && result.outputs ? Object.values(result.outputs).map((a) => a.buffer) : [];
    self.postMessage({id, ok: true, result}, transfer);
  } catch (e) {
    self.postMessage({id, ok: false, error: String((e && e.message) || e)});
  }
};
