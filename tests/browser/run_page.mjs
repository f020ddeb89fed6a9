// Drives an sd2tflite page in the system Chromium (puppeteer-core, executablePath: puppeteer's own
// browser download is not used) and prints what the page did as one JSON line:
//   node run_page.mjs URL [--screenshot FILE] [--timeout SECONDS] [--webgpu]
// The page is read through window.sd2tflite (status, error, step, timings, placement) and its canvas.
import puppeteer from 'puppeteer-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = process.argv.slice(2);
const url = args[0];
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const screenshot = option('--screenshot', null);
const timeout = Number(option('--timeout', '300')) * 1000;
const webgpu = args.includes('--webgpu');
const executablePath = process.env.SD2TFLITE_CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sd2tflite-puppeteer-'));
const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
               '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];
if (webgpu) flags.push('--enable-unsafe-webgpu');

const browser = await puppeteer.launch({executablePath, headless: true, userDataDir: profile, args: flags,
                                        defaultViewport: {width: 1100, height: 760}});
const consoleLines = [];
let result;
try {
  const page = await browser.newPage();
  page.on('console', (m) => consoleLines.push(m.text()));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url, {waitUntil: 'load', timeout});
  const seen = new Set();
  const progress = [];
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await page.evaluate(() => window.sd2tflite && {status: window.sd2tflite.status, step: window.sd2tflite.step,
                                                             stage: document.getElementById('stage').textContent,
                                                             bar: document.getElementById('progress').value});
    if (s) {
      const key = `${s.stage}|${s.bar}`;
      if (!seen.has(key)) { seen.add(key); progress.push(s); }
      if (s.status === 'done' || s.status === 'error' || (s.status === 'ready' && !url.includes('run=1'))) break;
    }
    if (Date.now() > deadline) throw new Error(`the page did not finish within ${timeout / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  if (screenshot) await page.screenshot({path: screenshot});
  result = await page.evaluate(() => {
    const s = window.sd2tflite;
    const canvas = document.getElementById('canvas');
    let pixels = null;
    if (canvas.width) {
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let text = '';
      for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
      pixels = btoa(text);
    }
    return {status: s.status, error: s.error, step: s.step, steps: s.steps, timings: s.timings, placement: s.placement,
            context: s.context || null,
            accelerators: s.accelerators, width: canvas.width, height: canvas.height, pixels,
            errorShown: !document.getElementById('error').hidden, errorText: document.getElementById('error').textContent};
  });
  result.progress = progress;
} catch (e) {
  result = {status: 'harness-error', error: String(e && e.message || e)};
} finally {
  await browser.close();
  fs.rmSync(profile, {recursive: true, force: true});
}
result.console = consoleLines.filter((l) => !/^(INFO|I\d{4}|W\d{4})/.test(l)).slice(-50);
process.stdout.write(JSON.stringify(result) + '\n');
