// modelport client harness, browser: transformers.js in headless Chromium on 'webgpu' and 'wasm'.
//
//   node browser_embed.mjs request.json
//
// request.json: {model_dir, pooling, normalize, cases: [{name, texts}], runs: [{device, dtype, cases: [names]}], out,
//                chromium, run_timeout_s}, plus {mode: 'model', outputs, probes, bare_queries} for graphs that
//                finish the embedding (embed_core.mjs runEmbedModel)
//           or, for decoders: {model_dir, task: 'text-generation', steps, prompts, runs: [{device, dtype}], ...}
// Serves page.html, embed_core.mjs, transformers.js + the ONNX Runtime wasm files (from this folder's
// node_modules) and the artifact from 127.0.0.1 with COOP/COEP headers (cross-origin isolation:
// SharedArrayBuffer, threaded wasm). Drives the system Chromium (no browser download) through
// puppeteer-core. Each run gets a fresh browser context and page. Requests to any other origin are
// aborted and listed in the result, and the host resolver maps every other host to nothing, so a
// CDN fallback cannot silently succeed.
import puppeteer from 'puppeteer-core';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const modelDir = path.resolve(req.model_dir);
const modelId = path.basename(modelDir);

// URL prefix -> directory. Only these folders are reachable from the page.
const MOUNTS = [
  ['/node_modules/@huggingface/transformers/dist/', path.join(HERE, 'node_modules/@huggingface/transformers/dist')],
  ['/node_modules/onnxruntime-web/dist/', path.join(HERE, 'node_modules/onnxruntime-web/dist')],
  [`/models/${modelId}/`, modelDir],
];
const FILES = { '/': path.join(HERE, 'page.html'), '/harness/embed_core.mjs': path.join(HERE, 'embed_core.mjs'),
  '/harness/generate_core.mjs': path.join(HERE, 'generate_core.mjs') };
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json',
  '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.txt': 'text/plain' };

/** Installed version of a harness dependency (read from disk: not every package exports package.json). */
function pkgVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', name, 'package.json'), 'utf8')).version;
}

/** The file a URL path maps to, or null (outside every mount, or escaping it with '..'). */
function resolveUrl(urlPath) {
  if (FILES[urlPath]) return FILES[urlPath];
  for (const [prefix, dir] of MOUNTS) {
    if (!urlPath.startsWith(prefix)) continue;
    const file = path.resolve(dir, '.' + path.sep + decodeURIComponent(urlPath.slice(prefix.length)));
    return file.startsWith(dir + path.sep) ? file : null;
  }
  return null;
}

function serve(requestJson) {
  const server = http.createServer((rq, rs) => {
    const urlPath = new URL(rq.url, 'http://127.0.0.1').pathname;
    const headers = {
      'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin', 'Cache-Control': 'no-store',
    };
    if (urlPath === '/request.json') {
      rs.writeHead(200, { ...headers, 'Content-Type': 'application/json' });
      return rs.end(requestJson);
    }
    const file = resolveUrl(urlPath);
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      rs.writeHead(404, headers);
      return rs.end('not found');
    }
    rs.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
      'Content-Length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(rs);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** One (device, dtype) run in a fresh browser context; never throws. */
async function runOne(browser, origin, index, run, timeoutMs) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const consoleTail = [];
  const offOrigin = [];
  const note = (line) => { consoleTail.push(line.slice(0, 400)); if (consoleTail.length > 30) consoleTail.shift(); };
  page.on('console', (m) => note(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => note(`[pageerror] ${e.message}`));
  page.on('requestfailed', (r) => note(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
  await page.setRequestInterception(true);
  page.on('request', (r) => {
    const url = r.url();
    if (url.startsWith(origin + '/') || url.startsWith('data:') || url.startsWith('blob:')) return r.continue();
    offOrigin.push(url);
    return r.abort('blockedbyclient');
  });
  const t0 = Date.now();
  const failed = { device: run.device, dtype: run.dtype, status: 'error', stage: 'page', cases: [] };
  let out;
  try {
    await page.goto(`${origin}/?run=${index}`);
    await page.waitForFunction(() => window.__modelport !== undefined, { timeout: timeoutMs, polling: 250 });
    out = await page.evaluate(() => window.__modelport);
    if (out.fatal) out = { result: { ...failed, reason: out.fatal } };
  } catch (e) {
    out = { result: { ...failed, reason: String(e.message || e).slice(0, 500) } };
  }
  out.result.page_s = (Date.now() - t0) / 1000;
  out.result.off_origin_requests = offOrigin;
  if (out.result.status === 'error') out.result.console_tail = consoleTail;
  await context.close().catch(() => {});
  return out;
}

// task 'text-generation' (decoders: prompts + steps, generate_core.mjs) or the default feature extraction
const requestJson = JSON.stringify({ model_id: modelId, task: req.task, prompts: req.prompts, steps: req.steps,
  cases: req.cases, runs: req.runs, pooling: req.pooling, normalize: req.normalize, mode: req.mode, outputs: req.outputs,
  probes: req.probes, bare_queries: req.bare_queries });
const server = await serve(requestJson);
const origin = `http://127.0.0.1:${server.address().port}`;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'modelport-chromium-'));
const result = { client: 'chromium', versions: {}, environment: {}, runs: [] };
let browser;
try {
  browser = await puppeteer.launch({
    executablePath: req.chromium || '/usr/bin/chromium', headless: true, ignoreDefaultArgs: ['--headless'],
    args: [...req.chromium_flags, `--user-data-dir=${profile}`], protocolTimeout: (req.run_timeout_s || 600) * 1000 + 60000,
  });
  result.versions = {
    chromium: await browser.version(), 'puppeteer-core': pkgVersion('puppeteer-core'),
    'onnxruntime-web': pkgVersion('onnxruntime-web'),
  };
  for (const [index, run] of req.runs.entries()) {
    const out = await runOne(browser, origin, index, run, (req.run_timeout_s || 600) * 1000);
    if (out.environment) result.environment[run.device] = out.environment;
    process.stderr.write(`chromium ${run.device} ${run.dtype}: ${out.result.status} (${out.result.page_s.toFixed(1)}s)\n`);
    result.runs.push(out.result);
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
if (result.environment.wasm || result.environment.webgpu) {
  result.versions['transformers.js'] = (result.environment.wasm || result.environment.webgpu)['transformers.js'];
}
fs.writeFileSync(req.out, JSON.stringify(result));
