// The wasm build's f32 GEMM (crate/src/model/wasm_gemm.rs: every build's attention products,
// the relaxed build's linear layers) on the built package (www/dist/pkg, or
// $ANOSCOPE_WASM_PKG), against an f64 sum: odd shapes (rows not a multiple of the 4-row tile,
// columns not a multiple of the 8-wide panel, depths over one 384 K block), padded row strides,
// `b` row-major and read as a transpose (attention's q kᵀ), the product added to what `c`
// holds. The relaxed build is checked the same way in Chromium (tests/browser/relaxed.test.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const mod = await import(path.join(PKG, 'anoscope.js'));
mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });

const SHAPES = [[1, 1, 1], [3, 5, 7], [4, 64, 8], [197, 64, 197], [197, 197, 64], [13, 800, 9], [6, 384, 17], [2, 385, 3]];

test('f32 GEMM: matches an f64 sum on odd shapes, row-major and transposed b', () => {
  for (const transposed of [false, true]) {
    for (const [m, k, n] of SHAPES) {
      const e = mod.f32GemmCheck(m, k, n, 7, transposed);
      // f32 sums of up to 800 products of values in [-1, 1]: a few ulps of the sum; a wrong
      // index or stride would be of the order of the values.
      assert.ok(e < 1e-5, `[${m}, ${k}] × [${k}, ${n}]${transposed ? ' (b transposed)' : ''}: max relative |Δ| ${e}`);
    }
  }
});
