// LiteRT.js, loaded once per page or worker, with its log captured: LiteRT's native log lines are the only
// place that says how a graph was placed (isFullyAccelerated() is not reliable) and whether tensors
// could be allocated ("Failed to allocate tensors" is logged, never thrown).
import {getGlobalLiteRt, loadLiteRt, loadAndCompile, Tensor} from '/litertjs/core/dist/index.js';

export {Tensor};
export const logLines = [];

for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    logLines.push(args.map(String).join(' '));
    original(...args);
  };
}

let loading = null;
export function initLiteRt() {
  // jspi: graphs split between WebGPU and the CPU need it (and it excludes threads).
  loading ??= loadLiteRt('/litertjs/core/wasm/', {jspi: true});
  return loading;
}

// The size of this LiteRT.js instance's wasm heap (it grows, never shrinks: the peak), or null.
export function heapBytes() {
  try {
    return getGlobalLiteRt().liteRtWasm.HEAPU8.length;
  } catch (e) {
    return null;
  }
}

export async function webgpuAdapter() {
  if (!('gpu' in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch (e) {
    return null;
  }
}

const PARTITIONED = /Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. resulted in (\d+) partitions/;
const REPLACING = /Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]*)\) node, yielding (\d+) partitions for subgraph (\d+)/;
const REJECTED_HEADER = /Following operations are not supported by GPU delegate:/;
const REJECTED_LINE = /^\s*([A-Z][A-Z0-9_]*):(?:\s+(.*))?$/; // the reason may be empty
const OPS_SUMMARY = /(\d+) operations will run on the GPU, and the remaining (\d+) operations? will run on the CPU/;

// Where LiteRT put a graph's ops, from the log lines of one compile: the GPU accelerator's own
// partition line(s) (subgraph 0: the signature's graph), and its list of refused operator types.
export function parsePlacement(lines) {
  const text = lines.join('\n').split('\n');
  const subgraphs = {};
  const rejected = [];
  let inRejected = false;
  let summary = null;
  for (const line of text) {
    const s = OPS_SUMMARY.exec(line);
    if (s) {
      summary = {gpuOps: +s[1], totalOps: +s[1] + +s[2]};
      inRejected = false;
      continue;
    }
    let m = PARTITIONED.exec(line);
    if (m) {
      subgraphs[m[1]] = {gpuOps: +m[2], totalOps: +m[3], partitions: +m[4]};
      inRejected = false;
      continue;
    }
    m = REPLACING.exec(line);
    if (m && !(m[5] in subgraphs)) {
      subgraphs[m[5]] = {gpuOps: +m[1], totalOps: +m[2], partitions: +m[4], delegate: m[3]};
      continue;
    }
    if (REJECTED_HEADER.test(line)) {
      inRejected = true;
      const rest = line.split(REJECTED_HEADER)[1];
      if (rest && REJECTED_LINE.test(rest)) rejected.push(rest.trim());
      continue;
    }
    if (inRejected) {
      const r = REJECTED_LINE.exec(line);
      if (r) rejected.push(`${r[1]}: ${(r[2] || '').trim() || '(no reason logged)'}`);
      else if (line.trim()) inRejected = false;
    }
  }
  // The GPU accelerator's summary ("N operations will run on the GPU, and the remaining M ...");
  // a partition line where a LiteRT.js version logs one instead.
  const main = summary || subgraphs['0'];
  return {
    gpuOps: main ? main.gpuOps : null,
    totalOps: main ? main.totalOps : null,
    subgraphs,
    rejected,
  };
}

export function allocationFailed(lines) {
  return lines.some((l) => /Failed to allocate tensors/.test(l));
}

// Loads and compiles one file; returns the model with the log lines its compile wrote.
export async function compileModel(source, accelerator) {
  await initLiteRt();
  const first = logLines.length;
  let model = null;
  let error = null;
  try {
    model = await loadAndCompile(source, {accelerator});
  } catch (e) {
    error = e;
  }
  const lines = logLines.slice(first);
  return {model, error, lines, placement: parsePlacement(lines), allocationFailed: allocationFailed(lines)};
}
