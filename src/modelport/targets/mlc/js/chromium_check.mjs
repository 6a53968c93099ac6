// Runs WebLLM in headless Chromium (SwiftShader WebGPU) on MLC packages, everything served from
// 127.0.0.1 by a server that answers like the Hugging Face hub: each folder of `hub_repos` at
// /<org>/<name>/resolve/main/<file>, the URL form WebLLM builds from a hub id (cleanModelUrl), so
// what is checked is the package as a hub repo serves it. Also served: the page, WebLLM's bundle
// from node_modules (/web-llm/, import-mapped as "@mlc-ai/web-llm"), and for the "snippet" entry
// the model card's code (/snippet.mjs, its hub URL pointed at this server). Requests to any other
// origin are aborted and reported, so a CDN fallback cannot pass silently.
//
//   node chromium_check.mjs request.json result.json
// request.json: {hub_repos: {"<org>/<name>": dir}, entry, model_id (app_config entry), ids: [[...]], texts: [...],
//                chromium, chromium_flags, timeout_s, page (default webllm_check.html; webllm_chat.html: chat
//                packages, with `cases`)}
// entry: {app_config: "/<org>/<name>/resolve/main/webllm-app-config.js"} (texts already wrapped)
//     or {snippet: "<the card's JS>", hub_url: "https://huggingface.co", exports} (texts wrapped by the
//        snippet's own withSpecialTokens; it must define the `exports` names, default `engine` and
//        `withSpecialTokens`; a chat card's snippet exports `engine` only)
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
  ...Object.entries(req.hub_repos).map(([repo, dir]) => [`/${repo}/resolve/main/`, path.resolve(dir)]),
];
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
  ".json": "application/json", ".wasm": "application/wasm", ".txt": "text/plain" };

function resolveUrl(urlPath) {
  if (urlPath === "/" || urlPath === "/check.html") return path.join(HERE, req.page || "webllm_check.html");
  for (const [prefix, dir] of MOUNTS) {
    if (!urlPath.startsWith(prefix)) continue;
    const file = path.resolve(dir, "." + path.sep + decodeURIComponent(urlPath.slice(prefix.length)));
    return file.startsWith(dir + path.sep) ? file : null;
  }
  return null;
}

// The card's snippet as a module: its hub URL replaced by this server's origin, and the two names
// the page uses exported (a snippet without them fails to load: the check cannot pass silently).
function snippetModule(entry, origin) {
  const names = (entry.exports || ["engine", "withSpecialTokens"]).join(", ");
  return `${entry.snippet.replaceAll(entry.hub_url, origin)}\nexport { ${names} };\n`;
}

// What the server writes itself: the page's request, and the snippet module for a "snippet" entry.
function generated(urlPath, origin) {
  const pageEntry = req.entry.snippet ? { snippet: "/snippet.mjs" } : req.entry;
  if (urlPath === "/request.json") {
    return ["application/json", JSON.stringify({ model_id: req.model_id, ids: req.ids, texts: req.texts, entry: pageEntry,
                                                 cases: req.cases })];
  }
  if (urlPath === "/snippet.mjs" && req.entry.snippet) return ["text/javascript", snippetModule(req.entry, origin)];
  return null;
}

function serve() {
  const server = http.createServer((rq, rs) => {
    const urlPath = new URL(rq.url, "http://127.0.0.1").pathname;
    const made = generated(urlPath, `http://127.0.0.1:${server.address().port}`);
    if (made) {
      rs.writeHead(200, { "Content-Type": made[0], "Cache-Control": "no-store" });
      return rs.end(made[1]);
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

const server = await serve();
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
