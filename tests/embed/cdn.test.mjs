// The element from a CDN-like path: the unpacked tarball served under /npm/anoscope@VERSION/ with
// a plain HTML page that loads it with one module script, under the site's own CSP (from
// www/index.html), the weights on another origin. Checks what a docs reader pays before touching
// the element (≤ 100 kB, no worker, wasm or model), the result against the main page's, the
// single-threaded build without cross-origin isolation and the threaded one with it, loading on
// scroll, and the message when the default checkpoint cannot be fetched.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../browser/harness.mjs';
import { browser, dropOnElement, mainPageResult, maxAbsDiff, modelServer, openPage, packPackage, staticServer } from './helpers.mjs';

const SITE_CSP = /http-equiv="Content-Security-Policy" content="([^"]+)"/.exec(readFileSync(join(ROOT, 'www', 'index.html'), 'utf8'))[1];
const GOAL_BYTES = 100_000;

let pkg;
let model;
let pages;
let reference;

/** A docs page: the two lines of the README (module script + element), and a tall spacer for loading="visible". */
function writePages(dir, version, modelFolder) {
  const script = `<script type="module" src="/npm/anoscope@${version}/anomaly-detector.js"></script>`;
  const doc = (body) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Docs page</title><link rel="icon" href="data:,"><link rel="stylesheet" href="page.css">
${script}
</head><body><h1>Checking a part</h1>
${body}
</body></html>
`;
  writeFileSync(join(dir, 'index.html'), doc(`<anomaly-detector id="detector" category="bottle" model="${modelFolder}"></anomaly-detector>`));
  writeFileSync(
    join(dir, 'below.html'),
    doc(`<p id="spacer">A long page.</p><anomaly-detector id="detector" category="bottle" loading="visible" model="${modelFolder}"></anomaly-detector>`),
  );
  writeFileSync(join(dir, 'default.html'), doc('<anomaly-detector id="detector" category="bottle"></anomaly-detector>'));
  writeFileSync(join(dir, 'page.css'), '#spacer { height: 3000px; }\n');
}

before(async () => {
  pkg = await packPackage();
  model = await modelServer();
  pages = mkdtempSync(join(tmpdir(), 'anoscope-cdn-page-'));
  writePages(pages, pkg.version, model.folder);
  reference = await mainPageResult();
});

after(async () => {
  await model?.stop();
  pkg?.cleanup();
  if (pages) rmSync(pages, { recursive: true, force: true });
});

/** The site's CSP with the model's origin allowed to connect. */
const csp = () => SITE_CSP.replace("connect-src 'self'", `connect-src 'self' ${model.origin}`);

async function site(extra = {}) {
  return staticServer({ '/': pages, [`/npm/anoscope@${pkg.version}/`]: pkg.stage }, { headers: { 'content-security-policy': csp(), ...extra } });
}

const shadowText = (page, sel) => page.evaluate((sel) => document.querySelector('#detector').shadowRoot.querySelector(sel)?.textContent ?? null, sel);

test('from /npm/anoscope@X/: ≤ 100 kB before first use, lazy, then the main page\'s result on one thread', { timeout: 120_000 }, async () => {
  const s = await site();
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, s.url);
    await page.waitForLoadState('networkidle');
    // First paint: the drop zone at once, nothing of the worker, wasm or model fetched.
    assert.match(await shadowText(page, '.zone'), /^Drop, paste or pick an image to check it for anomalies\.$/);
    const early = s.log.map((r) => `${r.path} (${r.bytes})`);
    const earlyBytes = s.log.reduce((n, r) => n + r.bytes, 0);
    assert.ok(!s.log.some((r) => /worker\.js|\.wasm$|pkg/.test(r.path)), `fetched before use: ${early.join(', ')}`);
    assert.equal(model.log.length, 0);
    assert.ok(earlyBytes <= GOAL_BYTES, `${earlyBytes} bytes fetched before first interaction (goal ${GOAL_BYTES}): ${early.join(', ')}`);

    // First use: hovering starts the load (with a progress bar), the drop scores.
    const sawProgress = page.evaluate(
      () =>
        new Promise((resolve) => {
          const p = document.querySelector('#detector').shadowRoot.querySelector('progress');
          new MutationObserver(() => !p.hidden && resolve(true)).observe(p, { attributes: true });
          setTimeout(() => resolve(!p.hidden), 20_000);
        }),
    );
    await page.hover('#detector');
    assert.equal(await sawProgress, true, 'no progress bar while loading');
    const d = await dropOnElement(page, '#detector');
    assert.ok(Math.abs(d.score - reference.score) <= 1e-6, `score ${d.score} vs the main page's ${reference.score}`);
    assert.ok(maxAbsDiff(d.map, reference.map) <= 1e-6);
    assert.equal(await page.evaluate(() => document.querySelector('#detector').shadowRoot.querySelector('progress').hidden), true);
    assert.match(await shadowText(page, '.notice'), /^Single-threaded: this page is not cross-origin isolated \(no COOP\/COEP headers\)\.$/);
    assert.match(await shadowText(page, '[part=status]'), /^Anomaly score \d\.\d{3}: (normal|anomalous) at threshold 0\.5(\.|; \d+ regions? at or above it\.)$/);
    // The single-threaded build only; the weights from their own origin, nothing else anywhere.
    assert.ok(s.log.some((r) => r.path.endsWith('/pkg/anoscope_bg.wasm')));
    assert.ok(!s.log.some((r) => r.path.includes('pkg-threads')));
    for (const u of b.requests) assert.ok(u.startsWith(s.origin) || u.startsWith(model.folder) || /^(blob|data):/.test(u), `request to ${u}`);
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
    const ms = [];
    for (let i = 0; i < 3; i += 1) ms.push((await dropOnElement(page, '#detector')).ms);
    const best = Math.min(...ms);
    console.log(
      `cdn path: ${earlyBytes} bytes fetched before first interaction (${early.length} requests: ${early.join(', ')}); ` +
        `package ${pkg.packed} bytes packed, ${pkg.unpacked} unpacked; drop → anomaly-score best of 3: ${best.toFixed(1)} ms ` +
        `vs the main page's ${reference.ms.toFixed(1)} ms (ratio ${(best / reference.ms).toFixed(2)})`,
    );
  } finally {
    await b.close();
    await s.stop();
  }
});

test('with COOP/COEP the element runs the threaded build, same result', { timeout: 120_000 }, async () => {
  const s = await site({ 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' });
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, s.url);
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    const ready = page.evaluate(
      () => new Promise((resolve) => document.querySelector('#detector').addEventListener('anomaly-ready', (e) => resolve(e.detail), { once: true })),
    );
    await page.evaluate(() => document.querySelector('#detector').load());
    const info = await ready;
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    console.log(`cross-origin isolated: ${info.notice} (${cores} cores)`);
    if (cores > 1) {
      assert.equal(info.threads, cores);
      assert.match(info.notice, new RegExp(`^Running on ${cores} threads`));
      assert.ok(s.log.some((r) => r.path.endsWith('/pkg-threads/anoscope_bg.wasm')));
    }
    const d = await dropOnElement(page, '#detector');
    assert.ok(Math.abs(d.score - reference.score) <= 1e-6, `score ${d.score} vs ${reference.score}`);
    assert.ok(maxAbsDiff(d.map, reference.map) <= 1e-6);
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    await s.stop();
  }
});

test('loading="visible": nothing loads until the element scrolls into view, then it loads by itself', { timeout: 120_000 }, async () => {
  const s = await site();
  const b = await browser();
  try {
    const { page } = await openPage(b.context, `${s.url}below.html`);
    await page.waitForLoadState('networkidle');
    await page.waitForTimeout(500);
    assert.ok(!s.log.some((r) => /worker\.js|\.wasm$/.test(r.path)), 'loaded while out of view');
    const ready = page.evaluate(
      () => new Promise((resolve) => document.querySelector('#detector').addEventListener('anomaly-ready', (e) => resolve(e.detail), { once: true })),
    );
    await page.evaluate(() => document.querySelector('#detector').scrollIntoView());
    const info = await ready;
    assert.equal(info.model, 'test-tiny');
    assert.ok(s.log.some((r) => r.path.endsWith('/pkg/anoscope_bg.wasm')));
  } finally {
    await b.close();
    await s.stop();
  }
});

test('without model="…" the default is the manifest\'s smallest checkpoint, with a clear message when it cannot be fetched', { timeout: 120_000 }, async () => {
  const s = await site();
  const b = await browser();
  try {
    const { page } = await openPage(b.context, `${s.url}default.html`);
    // No internet in the tests: Hugging Face is refused here, as an offline reader would be.
    const asked = [];
    await page.route('https://huggingface.co/**', (r) => {
      asked.push(r.request().url());
      return r.abort('internetdisconnected');
    });
    const failed = page.evaluate(
      () => new Promise((resolve) => document.querySelector('#detector').addEventListener('anomaly-error', (e) => resolve(e.detail.message), { once: true })),
    );
    await page.hover('#detector');
    const message = await failed;
    assert.match(message, /^could not download clip-vit-base-patch16 from huggingface\.co \(.*\): the network or the server's CORS refuses it\. Host the checkpoint next to your page and point model="…" at its folder\.$/);
    assert.equal(await shadowText(page, '[part=status]'), message);
    assert.ok(asked.some((u) => u.startsWith('https://huggingface.co/openai/clip-vit-base-patch16/resolve/')), asked.join(', '));
    // The next use tries again (and says the same), rather than staying broken.
    const tries = asked.length;
    const again = await page.evaluate(() => document.querySelector('#detector').detect(new Blob(['x'])).then(() => 'scored', (e) => e.message));
    assert.equal(again, message);
    assert.ok(asked.length > tries, 'no second attempt');
  } finally {
    await b.close();
    await s.stop();
  }
});

test('from a CDN on another origin than the page (and the weights): a blob: module worker imports the package', { timeout: 120_000 }, async () => {
  // A real CDN: the package on its own origin with CORS; the page's CSP must then allow that
  // origin's scripts and workers, and blob: workers (the README says so).
  const cdn = await staticServer({ [`/npm/anoscope@${pkg.version}/`]: pkg.stage }, { cors: true });
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-cdn-other-'));
  writeFileSync(
    join(dir, 'index.html'),
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Docs</title><link rel="icon" href="data:,">
<script type="module" src="${cdn.url}npm/anoscope@${pkg.version}/anomaly-detector.js"></script></head>
<body><anomaly-detector id="detector" category="bottle" model="${model.folder}"></anomaly-detector></body></html>
`,
  );
  const policy = csp()
    .replace("script-src 'self'", `script-src 'self' ${cdn.origin}`)
    .replace("worker-src 'self'", `worker-src blob: ${cdn.origin}`)
    .replace("style-src 'self'", `style-src 'self' ${cdn.origin}`)
    .replace(`connect-src 'self' ${model.origin}`, `connect-src 'self' ${model.origin} ${cdn.origin}`);
  const s = await staticServer({ '/': dir }, { headers: { 'content-security-policy': policy } });
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, s.url);
    const d = await dropOnElement(page, '#detector');
    assert.ok(Math.abs(d.score - reference.score) <= 1e-6, `score ${d.score} vs ${reference.score}`);
    assert.ok(maxAbsDiff(d.map, reference.map) <= 1e-6);
    assert.ok(cdn.log.some((r) => r.path.endsWith('/worker.js') && r.status === 200));
    assert.ok(cdn.log.some((r) => r.path.endsWith('/pkg/anoscope_bg.wasm') && r.status === 200));
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    await s.stop();
    await cdn.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
