// Measures where LiteRT's GPU accelerator (WebGPU) places each file's ops and posts the result
// back to the server (sd2tflite/serve/placement.py drives this page in headless Chromium).
import {compileModel, initLiteRt, webgpuAdapter} from '/assets/litert.js';

async function post(result) {
  await fetch('/api/result', {method: 'POST', body: JSON.stringify(result)});
}

async function main() {
  const files = await (await fetch('/api/files')).json();
  const adapter = await webgpuAdapter();
  if (!adapter) {
    await post({error: 'this browser offers no WebGPU adapter (Chromium needs --enable-unsafe-webgpu headless)'});
    return;
  }
  const info = adapter.info || {};
  await initLiteRt();
  const results = [];
  for (const file of files) {
    const started = performance.now();
    const {model, error, lines, placement, allocationFailed} = await compileModel(file.url, 'webgpu');
    const entry = {name: file.name, ...placement, allocationFailed, seconds: (performance.now() - started) / 1000};
    if (error) entry.error = String(error && error.message || error);
    if (model) {
      entry.isFullyAccelerated = !!(model.liteRtCompiledModel && model.liteRtCompiledModel.isFullyAccelerated
        ? model.liteRtCompiledModel.isFullyAccelerated() : null);
      model.delete();
    }
    entry.log = lines;
    results.push(entry);
    document.getElementById('out').textContent = JSON.stringify(results, null, 1);
  }
  await post({adapter: {vendor: info.vendor || '', architecture: info.architecture || '', description: info.description || ''},
              userAgent: navigator.userAgent, results});
}

main().catch((e) => post({error: String(e && e.stack || e)}));
