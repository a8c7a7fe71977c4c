// The npm package inside a real VitePress docs build: the Markdown page uses <anomaly-detector>
// imported from the package installed from its `npm pack` tarball; `vitepress build`; the output
// served without COOP/COEP (as docs hosts serve it) and under a strict CSP like the site's (no
// 'unsafe-eval', 'wasm-unsafe-eval' only), the model from another origin. A real photo dropped
// on the element must give the main page's score and map (≤ 1e-6); no request may leave the
// page's origin but the model's; first paint must not wait for the detector.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  EMBED,
  bin,
  browser,
  dropOnElement,
  installTarball,
  mainPageResult,
  maxAbsDiff,
  modelServer,
  openPage,
  packPackage,
  staticServer,
} from './helpers.mjs';

let pkg;
let model;
let out;
let reference;

before(async () => {
  pkg = await packPackage();
  const installed = installTarball(pkg.tarball);
  assert.equal(installed.version, pkg.version);
  model = await modelServer();
  out = mkdtempSync(join(tmpdir(), 'anoscope-vitepress-'));
  bin('vitepress', ['build', 'vitepress', '--outDir', out], { VITE_ANOSCOPE_MODEL: model.folder });
  reference = await mainPageResult();
});

after(async () => {
  await model?.stop();
  pkg?.cleanup();
  if (out) rmSync(out, { recursive: true, force: true });
});

// The site's CSP (www/index.html), plus what VitePress itself needs: its one inline script
// (check-mac-os, always emitted) allowed by its sha256, and style attributes its theme renders.
// No 'unsafe-eval', no 'unsafe-inline' for scripts; the element needs none of these additions
// (cdn.test.mjs runs it under the site's CSP unchanged).
const inlineScriptHashes = (html) =>
  [...html.matchAll(/<script(?![^>]*\bsrc=)[^>]*>([\s\S]*?)<\/script>/g)].map(
    (m) => `'sha256-${createHash('sha256').update(m[1]).digest('base64')}'`,
  );
const csp = (modelOrigin, html) =>
  [
    "default-src 'self'",
    `script-src 'self' 'wasm-unsafe-eval' ${inlineScriptHashes(html).join(' ')}`,
    "worker-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self' blob: data:",
    `connect-src 'self' ${modelOrigin}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join('; ');

test('a VitePress page embeds the element from the tarball: same result as the main page, no other origin, strict CSP', { timeout: 180_000 }, async () => {
  const site = await staticServer({ '/': out }, {
    headers: { 'content-security-policy': csp(model.origin, readFileSync(join(out, 'index.html'), 'utf8')) },
  });
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, site.url);
    // First paint: the drop zone is there and says what to do, and nothing of the detector but
    // the element's module and stylesheet was fetched (no worker, wasm or model) before use.
    await page.waitForFunction(() => customElements.get('anomaly-detector'));
    const hint = await page.evaluate(() => document.querySelector('anomaly-detector').shadowRoot.querySelector('.zone').textContent);
    assert.match(hint, /^Drop, paste or pick an image/);
    await page.waitForLoadState('networkidle');
    const before = site.log.map((r) => r.path);
    assert.ok(!before.some((p) => /worker|\.wasm$/.test(p)), `fetched before use: ${before.join(', ')}`);
    assert.equal(model.log.length, 0, 'the model was fetched before use');
    const pageBytes = site.log.reduce((n, r) => n + r.bytes, 0);
    // The detector's share: the element's chunk (element, API and helpers bundled by Vite).
    const detectorBytes = site.log.filter((r) => /anomaly-detector|anoscope|worker/.test(r.path)).reduce((n, r) => n + r.bytes, 0);

    const first = await dropOnElement(page, '#detector');
    const d = await dropOnElement(page, '#detector');
    assert.ok(Number.isFinite(d.score));
    assert.equal(d.map.length, d.width * d.height);
    assert.equal(d.map.length, reference.map.length);
    assert.ok(Math.abs(d.score - reference.score) <= 1e-6, `score ${d.score} vs the main page's ${reference.score}`);
    const diff = maxAbsDiff(d.map, reference.map);
    assert.ok(diff <= 1e-6, `map differs from the main page's by ${diff}`);
    assert.ok(Math.abs(first.score - d.score) <= 1e-6);

    // Without COOP/COEP: the single-threaded build, and the element says so in one line.
    const notice = await page.evaluate(() => document.querySelector('anomaly-detector').shadowRoot.querySelector('.notice').textContent);
    assert.match(notice, /^Single-threaded: this page is not cross-origin isolated \(no COOP\/COEP headers\)\.$/);

    // Every request: the page's origin, or the model's (its three files only).
    const foreign = b.requests.filter((u) => !u.startsWith(site.origin) && !u.startsWith('blob:') && !u.startsWith('data:'));
    for (const u of foreign) assert.ok(u.startsWith(model.folder), `a request left the origin: ${u}`);
    assert.deepEqual([...new Set(model.log.map((r) => r.path.split('/').pop()))].sort(), ['config.json', 'model.safetensors', 'prompts.safetensors']);
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
    const ms = [d.ms];
    for (let i = 0; i < 2; i += 1) ms.push((await dropOnElement(page, '#detector')).ms);
    const best = Math.min(...ms);
    console.log(
      `vitepress: ${pageBytes} bytes fetched before first interaction (whole page; the detector's chunk ${detectorBytes}); ` +
        `drop → anomaly-score best of 3: ${best.toFixed(1)} ms (first drop, loading included: ${first.ms.toFixed(0)} ms) ` +
        `vs the main page's ${reference.ms.toFixed(1)} ms (ratio ${(best / reference.ms).toFixed(2)})`,
    );
  } finally {
    await b.close();
    await site.stop();
  }
});
