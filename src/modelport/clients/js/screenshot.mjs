// Screenshot a local HTML file (report.html) in headless Chromium and say what its images did.
//
//   node screenshot.mjs page.html out.png [chromium]
//
// Prints JSON: {images: [{alt, complete, naturalWidth, naturalHeight}], offline_violations: [urls]}.
// Every request that is not file: or data: is aborted and listed: the report must open offline.
import puppeteer from 'puppeteer-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [htmlPath, pngPath, chromium = '/usr/bin/chromium'] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'modelport-shot-'));
const browser = await puppeteer.launch({
  executablePath: chromium, headless: true, ignoreDefaultArgs: ['--headless'],
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--hide-scrollbars', `--user-data-dir=${profile}`],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  const violations = [];
  await page.setRequestInterception(true);
  page.on('request', (r) => {
    if (/^(file|data):/.test(r.url())) return r.continue();
    violations.push(r.url());
    return r.abort('blockedbyclient');
  });
  await page.goto(pathToFileURL(path.resolve(htmlPath)).href, { waitUntil: 'load' });
  const images = await page.$$eval('img', (imgs) => imgs.map((i) => ({
    alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight })));
  await page.screenshot({ path: pngPath, fullPage: true });
  process.stdout.write(JSON.stringify({ images, offline_violations: violations }));
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
