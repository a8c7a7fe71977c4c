// The relaxed-SIMD module variants (pkg-relaxed, pkg-threads-relaxed: f32x4.relaxed_madd in the
// f32 GEMM, crate/src/model/wasm_gemm.rs) in headless Chromium, which has relaxed SIMD: the
// worker picks them by WebAssembly.validate of a probe module, says so on the page, and scores
// like the SIMD128 module within the relaxed-FMA bound; with the probe made to fail
// (?relaxedprobe=fail) the SIMD128 module runs. Also the relaxed build's int8 GEMM
// (relaxed_dot_i8x16_i7x16_add_s, crate/src/model/wasm_qgemm.rs) against its scalar reference,
// here because Node 20's experimental version of that instruction is wrong, and its f32 GEMM
// against an f64 sum (as tests/wasm/gemm.test.mjs checks the SIMD128 build's).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { DIST, browser, dropAndWait, image, loadTestModel, makeSite, openPage, ready, serve } from './harness.mjs';

const build = JSON.parse(readFileSync(join(DIST, 'build.json'), 'utf8'));
const skip = build.wasmRelaxed ? false : 'no relaxed-SIMD build in www/dist (ANOSCOPE_RELAXED=0?)';

// Relaxed FMA: each product is added with one rounding instead of two, so activations differ
// by a few ulps per layer; the score and the overlay of the test model move by far less than this.
const SCORE_BOUND = 1e-4;

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

/** Opens the page with `query`, loads the test model, scores the bottle in `mode`. */
async function scoreWith(query, mode) {
  const { page, problems, cspViolations } = await openPage(b.context, `${server.url}?${query}`);
  try {
    await ready(page);
    await loadTestModel(page);
    const backend = await page.$eval('#backend', (el) => ({ text: el.textContent, relaxed: el.dataset.relaxed, title: el.title }));
    const wasmUrl = await page.evaluate(() => document.body.dataset.wasmUrl);
    await page.selectOption('#mode', mode);
    const drawn = await dropAndWait(page, [bottle()]);
    const pixels = await page.evaluate(() => {
      const c = document.getElementById('overlay');
      return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    });
    assert.deepEqual(problems, []);
    assert.deepEqual(await cspViolations(), []);
    return { backend, wasmUrl, score: drawn.score, pixels };
  } finally {
    await page.close();
  }
}

function assertClose(a, c) {
  assert.ok(Number.isFinite(a.score) && a.score >= 0 && a.score <= 1, `score ${a.score}`);
  assert.ok(Math.abs(a.score - c.score) <= SCORE_BOUND, `scores differ: ${a.score} vs ${c.score}`);
  assert.equal(a.pixels.length, c.pixels.length);
  let differing = 0;
  for (let i = 0; i < a.pixels.length; i++) if (Math.abs(a.pixels[i] - c.pixels[i]) > 2) differing++;
  assert.ok(differing <= a.pixels.length * 1e-3, `${differing} overlay channel values differ by more than 2`);
}

for (const mode of ['fast', 'winclip']) {
  test(`relaxed-SIMD module (1 thread) is picked and scores like the SIMD128 one: ${mode}`, { skip, timeout: 180_000 }, async () => {
    const relaxed = await scoreWith('threads=1', mode);
    const plain = await scoreWith('threads=1&relaxedprobe=fail', mode);
    assert.equal(relaxed.wasmUrl, 'pkg-relaxed/anoscope_bg.wasm');
    assert.equal(relaxed.backend.relaxed, 'true');
    assert.match(relaxed.backend.text, /^CPU \(WebAssembly SIMD \+ relaxed, 1 thread\)/);
    assert.equal(plain.wasmUrl, 'pkg/anoscope_bg.wasm');
    assert.equal(plain.backend.relaxed, 'false');
    assert.match(plain.backend.text, /^CPU \(WebAssembly SIMD, 1 thread\)/);
    assert.equal(plain.backend.title, 'SIMD128 module: this browser has no relaxed SIMD');
    assertClose(relaxed, plain);
  });
}

test('threaded relaxed-SIMD module (2 threads) is picked and scores like the threaded SIMD128 one', { timeout: 180_000 }, async (t) => {
  if (skip) return t.skip(skip);
  if (!build.wasmThreadsRelaxed) return t.skip('no threaded relaxed-SIMD build (it needs the nightly toolchain)');
  const relaxed = await scoreWith('threads=2', 'fast');
  const plain = await scoreWith('threads=2&relaxedprobe=fail', 'fast');
  assert.equal(relaxed.wasmUrl, 'pkg-threads-relaxed/anoscope_bg.wasm');
  assert.match(relaxed.backend.text, /^CPU \(WebAssembly SIMD \+ relaxed, 2 threads\)/);
  assert.equal(plain.wasmUrl, 'pkg-threads/anoscope_bg.wasm');
  assert.match(plain.backend.text, /^CPU \(WebAssembly SIMD, 2 threads\)/);
  assertClose(relaxed, plain);
});

test('relaxed-SIMD f32 GEMM matches an f64 sum on odd shapes, row-major and transposed b (Chromium)', { skip, timeout: 120_000 }, async () => {
  const { page, problems, cspViolations } = await openPage(b.context, server.url);
  try {
    await ready(page);
    const shapes = [[1, 1, 1], [3, 5, 7], [4, 64, 8], [197, 64, 197], [197, 197, 64], [13, 800, 9], [6, 384, 17], [2, 385, 3]];
    const errors = await page.evaluate(async (shapes) => {
      const m = await import(new URL('pkg-relaxed/anoscope.js', document.baseURI).href);
      await m.default();
      return [false, true].flatMap((t) => shapes.map(([rows, k, n]) => m.f32GemmCheck(rows, k, n, 7, t)));
    }, shapes);
    // Fused or unfused multiply-adds, f32 sums of up to 800 products: a few ulps of the sum.
    errors.forEach((e, i) => {
      const [m, k, n] = shapes[i % shapes.length];
      assert.ok(e < 1e-5, `[${m}, ${k}] × [${k}, ${n}]${i >= shapes.length ? ' (b transposed)' : ''}: max relative |Δ| ${e}`);
    });
    assert.deepEqual(problems, []);
    assert.deepEqual(await cspViolations(), []);
  } finally {
    await page.close();
  }
});

test('relaxed-SIMD module: both int8 GEMMs (relaxed and SIMD128 dot) match their scalar reference on odd shapes (Chromium)', { skip, timeout: 120_000 }, async () => {
  const { page, problems, cspViolations } = await openPage(b.context, server.url);
  try {
    await ready(page);
    const shapes = [[1, 32, 1], [3, 64, 5], [7, 800, 13], [197, 768, 24], [13, 3072, 9], [4, 1568, 16]];
    const out = await page.evaluate(async (shapes) => {
      const m = await import(new URL('pkg-relaxed/anoscope.js', document.baseURI).href);
      await m.default();
      const own = m.int8Dot();
      const saturates = m.relaxedDotSaturates();
      const errors = {};
      for (const dot of ['relaxed', 'simd128']) {
        m.setInt8Dot(dot);
        errors[dot] = { dot: m.int8Dot(), e: shapes.map(([rows, k, n]) => m.int8GemmCheck(rows, k, n, 42)) };
      }
      m.setInt8Dot('');
      let bad = '';
      try {
        m.setInt8Dot('vnni');
      } catch (e) {
        bad = String(e?.message ?? e);
      }
      return { own, saturates, errors, back: m.int8Dot(), bad };
    }, shapes);
    for (const dot of ['relaxed', 'simd128']) {
      assert.equal(out.errors[dot].dot, dot);
      shapes.forEach(([m, k, n], i) =>
        assert.ok(out.errors[dot].e[i] < 2e-4, `${dot}: [${m}, ${k}] × [${k}, ${n}]: max relative |Δ| ${out.errors[dot].e[i]}`),
      );
    }
    // The module's own choice: SIMD128 exactly where the relaxed dot product saturates.
    assert.equal(typeof out.saturates, 'boolean');
    assert.equal(out.own, out.saturates ? 'simd128' : 'relaxed');
    assert.equal(out.back, out.own);
    assert.match(out.bad, /unknown int8 dot product "vnni"/);
    assert.deepEqual(problems, []);
    assert.deepEqual(await cspViolations(), []);
  } finally {
    await page.close();
  }
});
