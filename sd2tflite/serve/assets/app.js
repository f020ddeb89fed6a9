// sd2tflite serve: the set's files on LiteRT.js. The page runs the models and the denoising loop;
// the server (the Python runtime's own code) gives the tokens, the starting noise and each sampler
// update, so the picture is the one `sd2tflite generate` draws from the same noise.
// Every model file runs in its own Web Worker (assets/worker.js), with its own LiteRT.js wasm heap.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// Read by the browser test (tests/browser/run_page.mjs) and handy in the console.
const state = window.sd2tflite = {status: 'loading', error: null, step: 0, steps: 0, timings: {}, placement: [],
                                   accelerators: {}, workersStarted: 0};

function showError(message) {
  state.status = 'error';
  state.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
  $('stage').textContent = 'stopped';
  $('go').disabled = false;
}

function stage(text) {
  $('stage').textContent = text;
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({error: `${url}: HTTP ${response.status}`}));
  if (!response.ok || body.error) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

function fromBase64(text) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

// One model file in its own Web Worker (assets/worker.js): its own LiteRT.js and wasm heap. Calls are
// answered in order; a worker that dies (its heap exhausted, a crash) fails every pending call.
class FileWorker {
  constructor(part) {
    this.part = part;
    this.pending = new Map();
    this.ids = 0;
    this.worker = new Worker('/assets/worker.js');  // classic: LiteRT.js's wasm loader uses importScripts()
    this.worker.onmessage = ({data}) => {
      const call = this.pending.get(data.id);
      this.pending.delete(data.id);
      if (!call) return;
      if (data.ok) call.resolve(data.result);
      else call.reject(new Error(data.error));
    };
    this.worker.onerror = (event) => {
      event.preventDefault();
      this.fail(`${part.path}: its worker stopped: ${event.message || 'an error without a message'}`);
    };
  }

  call(message) {
    if (!this.worker) return Promise.reject(new Error(`${this.part.path}: its worker was released`));
    const id = ++this.ids;
    return new Promise((resolve, reject) => {
      this.pending.set(id, {resolve, reject});
      this.worker.postMessage({...message, id});
    });
  }

  fail(message) {
    for (const call of this.pending.values()) call.reject(new Error(message));
    this.pending.clear();
  }

  terminate() {
    if (!this.worker) return;
    this.worker.terminate();  // its whole wasm heap goes with it
    this.worker = null;
    this.fail(`${this.part.path}: its worker was released`);
  }
}

// One component: its parts chained by the manifest's wiring (an input named like an earlier
// part's output takes that output), as runtime/litert.py's LiteRTComponent. Every part runs in its
// own worker, so the largest file, not the component, has to fit one wasm heap.
class Component {
  constructor(name, parts, accelerator) {
    Object.assign(this, {name, parts, accelerator, workers: null});
  }

  async load() {
    if (this.workers) return;
    this.workers = [];
    try {
      for (const part of this.parts) {
        const worker = new FileWorker(part);
        this.workers.push(worker);
        const loaded = await worker.call({op: 'load', part, accelerator: this.accelerator});
        const onGpu = this.accelerator !== 'webgpu' ? 0 :
          loaded.gpuOps ?? (loaded.notFullyCompiled ? null : part.ops);
        const row = state.placement.find((p) => p.file === part.path);
        const entry = {file: part.path, component: this.name, accelerator: this.accelerator, gpuOps: onGpu,
                       totalOps: part.ops, rejected: loaded.rejected, worker: state.workersStarted += 1,
                       heapBytes: Math.max(loaded.heapBytes || 0, row ? row.heapBytes : 0)};
        if (row) Object.assign(row, entry);
        else state.placement.push(entry);
        worker.row = row || entry;
      }
    } catch (e) {
      this.release();
      throw e;
    }
    showPlacement();
  }

  async run(inputs) {
    const values = {...inputs};
    for (let i = 0; i < this.parts.length; i++) {
      const part = this.parts[i];
      const feed = Object.fromEntries(part.inputs.map((spec) => [spec.name, values[spec.name]]));
      const {outputs, heapBytes} = await this.workers[i].call({op: 'run', inputs: feed});
      Object.assign(values, outputs);
      const row = this.workers[i].row;
      if (heapBytes > row.heapBytes) {
        row.heapBytes = heapBytes;
        showPlacement();
      }
    }
    const last = this.parts[this.parts.length - 1];
    return Object.fromEntries(last.outputs.map((s) => [s.name, values[s.name]]));
  }

  release() {
    for (const w of this.workers || []) w.terminate();
    this.workers = null;
  }
}

async function webgpuAdapter() {
  if (!('gpu' in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch (e) {
    return null;
  }
}

function showPlacement() {
  const rows = state.placement.map((p) => {
    const share = p.accelerator !== 'webgpu' ? 'CPU (XNNPACK)' :
      p.gpuOps == null ? 'WebGPU (share not logged)' :
      `${p.gpuOps.toLocaleString()} of ${p.totalOps.toLocaleString()} ops on the GPU (${(100 * p.gpuOps / p.totalOps).toFixed(1)} %)`;
    const heap = p.heapBytes ? `${(p.heapBytes / 2 ** 20).toLocaleString(undefined, {maximumFractionDigits: 0})} MiB` : '';
    return `<tr><td>${p.file}</td><td>${p.accelerator}</td><td>${share}</td><td class="num">${heap}</td></tr>`;
  });
  $('placement').innerHTML = '<tr><th>file</th><th>accelerator</th><th>placement</th>' +
    '<th title="each file runs in its own worker, with its own wasm heap (2 GiB at most)">wasm heap</th></tr>' + rows.join('');
}

function showTimings() {
  const t = state.timings;
  const rows = Object.entries(t).map(([k, v]) => `<tr><td>${k}</td><td class="num">${v.toFixed(2)} s</td></tr>`);
  $('timings').innerHTML = rows.join('');
}

function f32(x) {
  return Math.fround(x);
}

// Decoder output in [-1, 1] -> RGBA, the manifest's pixel rule (runtime/pipeline.py to_pixels),
// in float32 as numpy computes it.
function toPixels(decoded, width, height, rule) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, j = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) {
      const x = decoded[i * 3 + c];
      let v;
      if (rule === 'round') {
        const unit = Math.min(Math.max(f32(f32(x * 0.5) + 0.5), 0), 1);
        const scaled = f32(unit * 255);
        v = Math.round(scaled);
        if (Math.abs(scaled - Math.trunc(scaled)) === 0.5 && v % 2 === 1) v -= 1; // numpy rounds half to even
      } else {
        v = Math.trunc(Math.min(Math.max(f32(f32(f32(x + 1) / 2) * 255), 0), 255));
      }
      rgba[j++] = v;
    }
    rgba[j++] = 255;
  }
  return rgba;
}

let config;
const components = {};

async function setup() {
  config = await getJson('/api/config');
  const d = config.dims;
  $('set').textContent = `${config.family} ${config.quant} (${config.recipe}), ${d.img_width}×${d.img_height}, ` +
    `${Object.keys(config.components).join(', ')}; LiteRT.js ${config.litertjs}`;
  for (const name of config.samplers) $('sampler').add(new Option(name, name));
  $('sampler').value = config.defaults.sampler;
  $('steps').value = params.get('steps') || config.defaults.steps;
  $('guidance').value = config.defaults.guidance;
  if (params.get('prompt')) $('prompt').value = params.get('prompt');
  if (params.get('sampler')) $('sampler').value = params.get('sampler');
  if (params.get('seed')) $('seed').value = params.get('seed');
  if (!config.browser.fits) throw new Error(config.browser.reason);

  const asked = params.get('accelerator') || 'auto';
  const adapter = asked === 'wasm' ? null : await webgpuAdapter();
  if (asked === 'webgpu' && !adapter) throw new Error('?accelerator=webgpu: this browser offers no WebGPU adapter');
  const preferred = adapter ? 'webgpu' : 'wasm';
  for (const [name, parts] of Object.entries(config.components)) {
    if (!['text_encoder', 'diffusion', 'decoder'].includes(name)) continue; // text to image, the full VAE
    // LiteRT.js computes some components wrongly on WebGPU (the int8 text encoder): wasm for those.
    // ?webgpu_all=1 overrides that (to measure it: docs/browser.md).
    const avoid = config.webgpu_wrong[name] && params.get('webgpu_all') !== '1';
    const accelerator = preferred === 'webgpu' && avoid ? 'wasm' : preferred;
    components[name] = new Component(name, parts, accelerator);
    state.accelerators[name] = accelerator;
  }
  // Every file is loaded once before the first run: a set the browser cannot hold is refused here.
  const started = performance.now();
  for (const [name, component] of Object.entries(components)) {
    stage(`loading ${name}…`);
    await component.load();
    if (config.browser.stages[name] && config.browser.stages[name].file_bytes > (256 << 20)) component.release();
  }
  state.timings['load (all files)'] = (performance.now() - started) / 1000;
  showTimings();
  state.status = 'ready';
  stage(`ready: ${preferred === 'webgpu' ? 'WebGPU' : 'wasm (CPU)'}` +
        (adapter && adapter.info ? ` (${adapter.info.vendor} ${adapter.info.architecture})` : ''));
  $('go').disabled = false;
}

async function generate() {
  $('go').disabled = true;
  $('error').hidden = true;
  state.status = 'running';
  state.error = null;
  state.timings = {};
  const timed = async (label, fn) => {
    const t0 = performance.now();
    const result = await fn();
    state.timings[label] = (state.timings[label] || 0) + (performance.now() - t0) / 1000;
    showTimings();
    return result;
  };
  const d = config.dims;
  const run = await getJson('/api/start', {method: 'POST', body: JSON.stringify({
    prompt: $('prompt').value, negative_prompt: $('negative').value, sampler: $('sampler').value,
    steps: $('steps').value, guidance: $('guidance').value, seed: $('seed').value})});
  state.steps = run.steps;
  state.step = 0;
  $('progress').max = run.steps;
  $('progress').value = 0;

  const positions = Int32Array.from({length: d.batch_size * d.max_text_length}, (_, i) => i % d.max_text_length);
  const batchTokens = (tokens) => Int32Array.from({length: d.batch_size * tokens.length}, (_, i) => tokens[i % tokens.length]);
  const text = components.text_encoder;
  stage('encoding the prompt…');
  const context = await timed('text encoder', async () => {
    await text.load();
    const cond = (await text.run({tokens: batchTokens(run.tokens), positions})).context;
    const uncond = run.guided ? (await text.run({tokens: batchTokens(run.unconditional_tokens), positions})).context : null;
    return {cond, uncond};
  });
  state.context = Array.from(context.cond.subarray(0, 4096)); // for the browser test: the text encoder's output
  if (config.browser.stages.text_encoder.file_bytes > (256 << 20)) text.release();

  const unet = components.diffusion;
  await timed('UNet load', () => unet.load());
  const g = f32(run.guidance);
  let next = run;
  const loopStart = performance.now();
  while (!next.done) {
    stage(`denoising: step ${next.index + 1} of ${run.steps}`);
    const latent = fromBase64(next.model_input);
    const tEmb = fromBase64(next.timestep_embedding);
    const inputs = {latent, timestep_embedding: tEmb};
    if (run.guidance_embedding) inputs.guidance_embedding = fromBase64(run.guidance_embedding);
    const output = await timed('UNet', async () => {
      const cond = (await unet.run({...inputs, context: context.cond})).noise_pred;
      if (!run.guided) return cond;
      const uncond = (await unet.run({...inputs, context: context.uncond})).noise_pred;
      const guided = new Float32Array(cond.length);
      for (let i = 0; i < cond.length; i++) guided[i] = f32(uncond[i] + f32(g * f32(cond[i] - uncond[i])));
      return guided;
    });
    next = await timed('sampler (server)', () => getJson(`/api/step?run=${run.run_id}`, {method: 'POST', body: output}));
    state.step += 1;
    $('progress').value = state.step;
    state.timings['per step (mean)'] = (performance.now() - loopStart) / 1000 / state.step;
  }
  if (config.browser.stages.diffusion.file_bytes > (256 << 20)) unet.release();

  stage('decoding…');
  const decoder = components.decoder;
  const image = await timed('decoder', async () => {
    await decoder.load();
    return (await decoder.run({latent: fromBase64(next.latent)})).image;
  });
  const pixels = toPixels(image, d.img_width, d.img_height, config.pixels);
  const canvas = $('canvas');
  canvas.width = d.img_width;
  canvas.height = d.img_height;
  canvas.getContext('2d').putImageData(new ImageData(pixels, d.img_width, d.img_height), 0, 0);
  state.status = 'done';
  stage(`done: ${run.steps} ${run.sampler} steps, seed ${run.seed}` + (run.notes.length ? ` (${run.notes.join('; ')})` : ''));
  $('go').disabled = false;
}

$('form').addEventListener('submit', (event) => {
  event.preventDefault();
  generate().catch((e) => showError(String(e.message || e)));
});

setup().then(() => {
  if (params.get('run') === '1') $('go').click();
}).catch((e) => showError(String(e.message || e)));
