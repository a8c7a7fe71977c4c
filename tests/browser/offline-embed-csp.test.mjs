// Offline after one visit (service worker + Cache API), the embeddable element, and the strict
// Content-Security-Policy on both pages.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIST, browser, dropAndWait, image, loadTestModel, makeSite, openPage, ready, serve } from './harness.mjs';

let server;

before(async () => {
  server = await serve(makeSite());
});

after(() => server?.stop());

test('after one visit the page works with the network off', { timeout: 90_000 }, async () => {
  // Its own server, stopped before the offline reload: nothing can answer but the caches.
  // (context.setOffline alone does not cover service-worker fetches in Chromium.)
  const own = await serve(makeSite());
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, own.url);
    await ready(page);
    await page.evaluate(async () => {
      await navigator.serviceWorker.ready;
    });
    await loadTestModel(page, { complete: true }); // downloads (and caches) the test model
    await dropAndWait(page, [{ name: 'a.jpg', type: 'image/jpeg', bytes: image('bottle_good_000.jpg') }]);
    // The SW must control the page before going offline: reload once online.
    await page.reload();
    await ready(page);
    assert.ok(await page.evaluate(() => !!navigator.serviceWorker.controller), 'no service worker controls the page');
    own.kill();
    await b.context.setOffline(true);
    await page.reload();
    await ready(page);
    assert.match(await page.textContent('#engine-status'), /Detector ready/);
    await loadTestModel(page);
    const d = await dropAndWait(page, [{ name: 'b.jpg', type: 'image/jpeg', bytes: image('bottle_broken_small_000.jpg') }]);
    assert.ok(Number.isFinite(d.score));
    await b.context.setOffline(false);
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    own.stop();
  }
});

test('the embed page fires anomaly-score with the score and the map, under the same CSP', { timeout: 90_000 }, async () => {
  const b = await browser();
  try {
    const { page, problems, cspViolations } = await openPage(b.context, `${server.url}examples/embed.html`);
    const detail = await page.evaluate(
      () =>
        new Promise((resolve, reject) => {
          const el = document.getElementById('detector');
          const done = (e) => resolve({ score: e.detail.score, verdict: e.detail.verdict, n: e.detail.map.length, w: e.detail.width, h: e.detail.height, exposed: el.map?.length });
          if (document.body.dataset.score) {
            resolve({ score: el.score, verdict: null, n: el.map.length, w: el.mapWidth, h: el.mapHeight, exposed: el.map.length });
          }
          el.addEventListener('anomaly-score', done, { once: true });
          el.addEventListener('anomaly-error', (e) => reject(new Error(e.detail.message)), { once: true });
        }),
    );
    assert.ok(Number.isFinite(detail.score));
    assert.ok(detail.w > 0 && detail.h > 0);
    assert.equal(detail.n, detail.w * detail.h);
    assert.equal(detail.exposed, detail.n, 'the element exposes .map');
    await page.waitForFunction(() => /anomaly-score: \d\.\d{3}/.test(document.getElementById('last').textContent));
    // It also scores what the user drops on it.
    const again = await page.evaluate(async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return (await document.getElementById('detector').detect(new File([bytes], 'x.jpg'))).score;
    }, image('bottle_good_000.jpg').toString('base64'));
    assert.ok(Number.isFinite(again));
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
  }
});

test('the CSP is enforced: an injected inline script is blocked and reported', { timeout: 90_000 }, async () => {
  const b = await browser();
  try {
    const { page, cspViolations } = await openPage(b.context, server.url);
    await ready(page);
    const ran = await page.evaluate(() => {
      window.__inline = false;
      const s = document.createElement('script');
      s.textContent = 'window.__inline = true';
      document.body.append(s);
      return new Promise((r) => setTimeout(() => r(window.__inline), 100));
    });
    assert.equal(ran, false, 'an inline script ran: the CSP is not in force');
    const v = await cspViolations();
    assert.ok(v.some((x) => x.startsWith('script-src')), `violations: ${v}`);
    const headers = (await page.request.get(server.url)).headers();
    assert.match(headers['content-security-policy'], /script-src 'self' 'wasm-unsafe-eval'/);
    assert.match(headers['content-security-policy'], /frame-ancestors 'self'/);
  } finally {
    await b.close();
  }
});

test('a tampered wasm module is refused before instantiation', { timeout: 90_000 }, async () => {
  // Every build (the page picks the threaded, relaxed-SIMD one where it can): one flipped byte in each.
  const build = JSON.parse(readFileSync(join(DIST, 'build.json'), 'utf8'));
  const tampered = {};
  for (const entry of [build.wasm, build.wasmThreads, build.wasmRelaxed, build.wasmThreadsRelaxed].filter(Boolean)) {
    const bad = Buffer.from(readFileSync(join(DIST, entry.url)));
    bad[bad.length >> 1] ^= 0xff;
    tampered[entry.url] = bad;
  }
  const own = await serve(makeSite(tampered));
  const b = await browser();
  try {
    const { page } = await openPage(b.context, own.url);
    await page.waitForFunction(() => /integrity check/.test(document.getElementById('message').textContent), null, {
      timeout: 60_000,
    });
    const text = await page.textContent('#message');
    assert.match(await page.textContent('#engine-status'), /^Not started: this page and the server are from different versions/);
    assert.match(
      text,
      /^The WebAssembly module \(pkg(-threads)?(-relaxed)?\/anoscope_bg\.wasm\) failed its integrity check \(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\): it is not the file build\.json of version [0-9a-f]{16} lists\..*Nothing was started\.$/,
    );
    assert.equal(await page.isDisabled('#image-files'), true);
  } finally {
    await b.close();
    own.stop();
  }
});
