// The wasm build's int8 image tower (crate/src/model/wasm_qgemm.rs) on the built package
// (www/dist/pkg, or $ANOSCOPE_WASM_PKG — e.g. www/dist/pkg-relaxed in an engine with relaxed
// SIMD; Node 20's experimental relaxed_dot_i8x16_i7x16_add_s is wrong, so the relaxed build is
// checked in Chromium by tests/browser/int8.test.mjs):
//   * the packed int8 GEMM against its scalar reference on odd shapes (rows not a multiple of
//     the 4-row tile, outputs not a multiple of the 8-wide panel, depths over one 768 K block)
//   * a q8 checkpoint (`anoscope convert --dtype q8`, the CLI is $ANOSCOPE_CLI, else
//     $CARGO_TARGET_DIR/debug/anoscope, default target/debug/anoscope) loads as int8 and its
//     image embeddings, patch and v-v tokens have cosine ≥ 0.999 against the f32 model, and so
//     do those of the f32 model after quantizeInt8().
// The score and map bounds of every mode are asserted natively on the same arithmetic
// (crate/tests/q8.rs, kernel "wasm").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from './safetensors.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const CLI =
  process.env.ANOSCOPE_CLI ||
  path.join(process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target'), 'debug/anoscope');

const mod = await import(path.join(PKG, 'anoscope.js'));
mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });
const { ClipModel, int8GemmCheck } = mod;

const MIN_COS = 0.999;

function minRowCos(a, b, d) {
  assert.equal(a.length, b.length, 'length');
  let least = Infinity;
  for (let r = 0; r < a.length / d; r++) {
    let dot = 0, na = 0, nb = 0;
    for (let i = r * d; i < (r + 1) * d; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    const c = dot / Math.sqrt(na * nb);
    if (!(c >= least)) least = c; // NaN propagates
  }
  return least;
}

test('int8 GEMM: matches its scalar reference on odd shapes', () => {
  for (const [m, k, n] of [[1, 32, 1], [3, 64, 5], [7, 800, 13], [197, 768, 24], [13, 3072, 9], [4, 1568, 16]]) {
    const e = int8GemmCheck(m, k, n, 42);
    // f32 sums of up to 96 block products in another order: a few ulps of the sum; an indexing
    // error would be of the order of the values.
    assert.ok(e < 2e-4, `[${m}, ${k}] × [${k}, ${n}]: max relative |Δ| ${e}`);
  }
  assert.throws(() => int8GemmCheck(2, 48, 3, 1), /48 inputs is not a positive multiple of 32/);
});

test('int8 dot product: the SIMD128 build runs SIMD128 and refuses the relaxed one', (t) => {
  if (PKG.includes('relaxed')) return t.skip('a relaxed-SIMD package (checked in Chromium by tests/browser/relaxed.test.mjs)');
  assert.equal(mod.int8Dot(), 'simd128');
  assert.equal(mod.relaxedDotSaturates(), undefined);
  assert.throws(() => mod.setInt8Dot('relaxed'), /this build has no relaxed-SIMD int8 kernel/);
  assert.throws(() => mod.setInt8Dot('fast'), /unknown int8 dot product "fast"/);
  mod.setInt8Dot('simd128');
  assert.equal(mod.int8Dot(), 'simd128');
  mod.setInt8Dot('');
  assert.equal(mod.int8Dot(), 'simd128');
});

for (const [name, configFile, weightsFile] of [
  ['hf_tiny', 'config.json', 'model.safetensors'],
  ['openclip_tiny', 'open_clip_config.json', 'open_clip_model.safetensors'],
]) {
  test(`int8 tower (${name}): a q8 file runs int8, cosine ≥ ${MIN_COS} against f32; quantizeInt8 agrees`, () => {
    const dir = path.join(REPO, 'tests/fixtures', name);
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'anoscope-int8-'));
    try {
      execFileSync(CLI, ['convert', '--model', dir, '--dtype', 'q8', '--out', out], { encoding: 'utf8' });
      const config = fs.readFileSync(path.join(dir, configFile), 'utf8');
      const f32 = ClipModel.load(configFile, config, new Uint8Array(fs.readFileSync(path.join(dir, weightsFile))));
      const q8 = ClipModel.load(configFile, config, new Uint8Array(fs.readFileSync(path.join(out, weightsFile))));
      assert.equal(f32.isInt8(), false);
      assert.equal(q8.isInt8(), true, 'a q8 checkpoint runs int8 in wasm');
      const s = f32.imageSize();
      const px = new Float32Array(3 * s * s).map((_, i) => 1.8 * Math.sin(i * 0.37) + 0.3 * Math.cos(i * 0.011));
      const embed = (m) => readSafetensors(m.embedImage(px, s, s, 2));
      const a = embed(f32);
      const b = embed(q8);
      for (const key of ['image_embeds', 'patch_tokens', 'surgery_tokens']) {
        const d = a.get(key).shape.at(-1);
        const c = minRowCos(a.get(key).data, b.get(key).data, d);
        assert.ok(c >= MIN_COS, `${name} ${key}: least cosine ${c} < ${MIN_COS}`);
        // Not a no-op: int8 differs from f32.
        assert.ok(a.get(key).data.some((v, i) => v !== b.get(key).data[i]), `${name} ${key}: int8 equals f32`);
      }
      // quantizeInt8 on the f32 model: the same int8 blocks (the q8 file's other tensors are
      // f16, so its outputs are not bit-equal), within the same bound.
      f32.quantizeInt8();
      assert.equal(f32.isInt8(), true);
      const c = embed(f32);
      for (const key of ['image_embeds', 'patch_tokens', 'surgery_tokens']) {
        const d = a.get(key).shape.at(-1);
        const cq = minRowCos(a.get(key).data, c.get(key).data, d);
        assert.ok(cq >= MIN_COS, `${name} ${key} after quantizeInt8: least cosine ${cq} < ${MIN_COS}`);
        assert.ok(minRowCos(b.get(key).data, c.get(key).data, d) >= 0.9999, `${name} ${key}: quantizeInt8 vs the q8 file`);
      }
      f32.free();
      q8.free();
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });
}
