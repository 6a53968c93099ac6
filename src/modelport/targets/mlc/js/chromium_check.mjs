// Runs WebLLM in headless Chromium (SwiftShader WebGPU) on an MLC package, everything served from
// 127.0.0.1: the page, WebLLM's bundle from node_modules, and the artifact. Requests to any other
// origin are aborted and reported, so a CDN fallback cannot pass silently.
//
//   node chromium_check.mjs request.json result.json
// request.json: {artifact, model_id, ids: [[...]], texts: [...], chromium, timeout_s}
import puppeteer from "puppeteer-core";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const [requestPath, resultPath] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(requestPath, "utf8"));
const MOUNTS = [
  ["/web-llm/", path.join(HERE, "node_modules/@mlc-ai/web-llm/lib")],
  ["/pkg/", path.resolve(req.artifact)],
];
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
  ".json": "application/json", ".wasm": "application/wasm", ".txt": "text/plain" };

function resolveUrl(urlPath) {
  if (urlPath === "/" || urlPath === "/check.html") return path.join(HERE, "webllm_check.html");
  for (const [prefix, dir] of MOUNTS) {
    if (!urlPath.startsWith(prefix)) continue;
    const file = path.resolve(dir, "." + path.sep + decodeURIComponent(urlPath.slice(prefix.length)));
    return file.startsWith(dir + path.sep) ? file : null;
  }
  return null;
}

function serve(requestJson) {
  const server = http.createServer((rq, rs) => {
    const urlPath = new URL(rq.url, "http://127.0.0.1").pathname;
    if (urlPath === "/request.json") {
      rs.writeHead(200, { "Content-Type": "application/json" });
      return rs.end(requestJson);
    }
    const file = resolveUrl(urlPath);
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      rs.writeHead(404);
      return rs.end("not found");
    }
    rs.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream",
      "Content-Length": fs.statSync(file).size, "Cache-Control": "no-store" });
    fs.createReadStream(file).pipe(rs);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const server = await serve(JSON.stringify({ model_id: req.model_id, ids: req.ids, texts: req.texts }));
const origin = `http://127.0.0.1:${server.address().port}`;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "modelport-webllm-"));
const result = { off_origin_requests: [], console_tail: [] };
let browser;
try {
  browser = await puppeteer.launch({
    executablePath: req.chromium || "/usr/bin/chromium", headless: true, ignoreDefaultArgs: ["--headless"],
    args: [...req.chromium_flags, `--user-data-dir=${profile}`], protocolTimeout: (req.timeout_s || 600) * 1000 + 60000,
  });
  result.chromium = await browser.version();
  const page = await browser.newPage();
  const note = (line) => { result.console_tail.push(line.slice(0, 400)); if (result.console_tail.length > 30) result.console_tail.shift(); };
  page.on("console", (m) => note(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => note(`[pageerror] ${e.message}`));
  await page.setRequestInterception(true);
  page.on("request", (r) => {
    const url = r.url();
    if (url.startsWith(origin + "/") || url.startsWith("data:") || url.startsWith("blob:")) return r.continue();
    result.off_origin_requests.push(url);
    return r.abort("blockedbyclient");
  });
  const t0 = Date.now();
  await page.goto(`${origin}/check.html`);
  await page.waitForFunction(() => window.__modelport !== undefined, { timeout: (req.timeout_s || 600) * 1000, polling: 250 });
  Object.assign(result, await page.evaluate(() => window.__modelport));
  result.page_s = (Date.now() - t0) / 1000;
} catch (e) {
  result.fatal = String((e && e.message) || e).slice(0, 2000);
} finally {
  if (browser) await browser.close().catch(() => {});
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
fs.writeFileSync(resultPath, JSON.stringify(result));
