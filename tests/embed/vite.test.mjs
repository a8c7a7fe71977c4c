// The package's JS API in a plain Vite app (no element): `import { createDetector } from 'anoscope'`
// from the tarball, `vite build`, served as static files (no COOP/COEP). The app scores a photo
// drawn on a canvas: the result must equal the same photo's file scored by the API and by the main
// page (≤ 1e-6). The bundler emits the worker and the wasm with the app: nothing is fetched from
// the package's folder or any other origin but the model's.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IMAGES } from '../browser/harness.mjs';
import { PHOTO, bin, browser, installTarball, mainPageResult, maxAbsDiff, modelServer, openPage, packPackage, staticServer } from './helpers.mjs';

let pkg;
let model;
let out;
let reference;

before(async () => {
  pkg = await packPackage();
  installTarball(pkg.tarball);
  model = await modelServer();
  out = mkdtempSync(join(tmpdir(), 'anoscope-vite-'));
  bin('vite', ['build', 'vite-app', '--outDir', out, '--emptyOutDir', '--logLevel', 'warn'], { VITE_ANOSCOPE_MODEL: model.folder });
  copyFileSync(join(IMAGES, PHOTO.name), join(out, 'sample.png'));
  reference = await mainPageResult();
});

after(async () => {
  await model?.stop();
  pkg?.cleanup();
  if (out) rmSync(out, { recursive: true, force: true });
});

test('a Vite app scores a canvas with the JS API: equal to the file and to the main page', { timeout: 120_000 }, async () => {
  // What Vite emitted: the worker and the single-threaded wasm next to the app's bundle.
  const assets = readdirSync(join(out, 'assets'));
  assert.ok(assets.some((f) => /^worker-.*\.js$/.test(f)), assets.join(', '));
  assert.ok(assets.some((f) => /^anoscope_bg-.*\.wasm$/.test(f)), assets.join(', '));
  const s = await staticServer({ '/': out });
  const b = await browser();
  try {
    const { page, problems } = await openPage(b.context, s.url);
    await page.waitForFunction(() => document.body.dataset.done, null, { timeout: 90_000 });
    assert.equal(await page.evaluate(() => window.__error ?? null), null);
    const r = await page.evaluate(() => window.__result);
    assert.equal(r.canvas.map.length, r.canvas.width * r.canvas.height);
    assert.ok(Math.abs(r.canvas.score - r.file.score) <= 1e-6, `canvas ${r.canvas.score} vs file ${r.file.score}`);
    assert.ok(maxAbsDiff(r.canvas.map, r.file.map) <= 1e-6);
    assert.ok(Math.abs(r.canvas.score - reference.score) <= 1e-6, `canvas ${r.canvas.score} vs the main page's ${reference.score}`);
    assert.ok(maxAbsDiff(r.canvas.map, reference.map) <= 1e-6);
    assert.equal(r.info.threads, 1);
    for (const u of b.requests) assert.ok(u.startsWith(s.origin) || u.startsWith(model.folder) || /^(blob|data):/.test(u), `request to ${u}`);
    // The worker and the wasm came from the bundle's assets (never from a node_modules path).
    assert.ok(s.log.some((x) => /^\/assets\/worker-.*\.js$/.test(x.path) && x.status === 200));
    assert.ok(s.log.some((x) => /^\/assets\/anoscope_bg-.*\.wasm$/.test(x.path) && x.status === 200));
    assert.deepEqual(s.log.filter((x) => x.status !== 200).map((x) => x.path), []);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    await s.stop();
  }
});
