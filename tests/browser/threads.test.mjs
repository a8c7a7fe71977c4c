// The threaded build (pkg-threads: wasm atomics, a rayon pool of Web Workers) in headless
// Chromium: it starts on a cross-origin isolated page, says how many threads run, and scores
// exactly like the single-threaded build (same score, same overlay pixels) in fast and WinCLIP.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { DIST, browser, dropAndWait, image, loadTestModel, makeSite, openPage, ready, serve } from './harness.mjs';

const build = JSON.parse(readFileSync(join(DIST, 'build.json'), 'utf8'));
const required = process.env.ANOSCOPE_REQUIRE_THREADS === '1';
const skip = build.wasmThreads
  ? false
  : 'no threaded build in www/dist (it needs the nightly toolchain with rust-src; see build.sh)';
if (skip && required) throw new Error(`ANOSCOPE_REQUIRE_THREADS=1 but ${skip}`);

let server;
let b;

before(async () => {
  if (skip) return;
  server = await serve(makeSite());
  b = await browser();
});

after(async () => {
  await b?.close();
  server?.stop();
});

const bottle = () => ({ name: 'bottle_broken_large_000.png', type: 'image/png', bytes: image('bottle_broken_large_000.png') });

/** Opens the page with ?threads=N, loads the test model, scores the bottle in `mode`. */
async function scoreWith(threads, mode) {
  const { page, problems, cspViolations } = await openPage(b.context, `${server.url}?threads=${threads}`);
  try {
    await ready(page);
    await loadTestModel(page);
    const backend = await page.$eval('#backend', (el) => ({ text: el.textContent, threads: el.dataset.threads }));
    await page.selectOption('#mode', mode);
    const drawn = await dropAndWait(page, [bottle()]);
    const pixels = await page.evaluate(() => {
      const c = document.getElementById('overlay');
      return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    });
    assert.deepEqual(problems, []);
    assert.deepEqual(await cspViolations(), []);
    return { backend, score: drawn.score, pixels };
  } finally {
    await page.close();
  }
}

for (const mode of ['fast', 'winclip']) {
  test(`threaded build (2 threads) scores like the single-threaded build: ${mode}`, { skip, timeout: 180_000 }, async () => {
    const one = await scoreWith(1, mode);
    const two = await scoreWith(2, mode);
    assert.equal(one.backend.threads, '1');
    assert.match(one.backend.text, /CPU \(WebAssembly SIMD( \+ relaxed)?, 1 thread\)/);
    assert.equal(two.backend.threads, '2');
    assert.match(two.backend.text, /CPU \(WebAssembly SIMD( \+ relaxed)?, 2 threads\)/);
    assert.ok(Number.isFinite(one.score) && one.score >= 0 && one.score <= 1, `score ${one.score}`);
    assert.ok(Math.abs(one.score - two.score) <= 1e-6, `scores differ: ${one.score} vs ${two.score}`);
    assert.equal(one.pixels.length, two.pixels.length);
    let differing = 0;
    for (let i = 0; i < one.pixels.length; i++) if (Math.abs(one.pixels[i] - two.pixels[i]) > 1) differing++;
    assert.equal(differing, 0, `${differing} overlay channel values differ by more than 1`);
  });
}
