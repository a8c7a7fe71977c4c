// Detection in wasm (the browser path) against the anomalib / transcription fixtures
// (tests/fixtures/winclip_tiny_expected.safetensors), ≤ 1e-4: the page runs the same code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, row } from './safetensors.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const TOL = 1e-4;

async function setup() {
  const mod = await import(path.join(PKG, 'anoscope.js'));
  mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });
  const dir = path.join(REPO, 'tests/fixtures/winclip_tiny');
  const model = mod.ClipModel.load(
    'open_clip_config.json',
    fs.readFileSync(path.join(dir, 'open_clip_config.json'), 'utf8'),
    new Uint8Array(fs.readFileSync(path.join(dir, 'open_clip_model.safetensors'))),
  );
  const exp = readSafetensors(fs.readFileSync(path.join(REPO, 'tests/fixtures/winclip_tiny_expected.safetensors')));
  return { mod, model, exp };
}

function maxAbs(a, b) {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function unit(v) {
  const n = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  return Array.from(v, (x) => x / n);
}

const { model, exp } = await setup();
const P = exp.get('text_embeddings').shape[1];
const t = exp.get('text_embeddings').data;
const fixturePair = new Float32Array([...unit(t.slice(0, P)), ...unit(t.slice(P))]);

test('wasm text pair for "bottle" equals anomalib\'s ensemble', () => {
  const ours = model.textPair('bottle', undefined, false);
  const d = maxAbs(ours, fixturePair);
  console.log(`wasm textPair(bottle) vs anomalib: max|Δ| = ${d.toExponential(2)}`);
  assert.ok(d <= TOL, `max|Δ| ${d}`);
});

for (const [mode, scores, maps, k, nRefs] of [
  ['winclip', 'zs_image_scores', 'zs_maps', 0, 0],
  ['fast', 'fast_image_scores', 'fast_maps', 2, 0],
  ['fewshot', 'fs1_image_scores', 'fs1_maps', 0, 1],
  ['fewshot', 'fs2_image_scores', 'fs2_maps', 0, 2],
]) {
  test(`wasm ${mode}${nRefs ? ` (${nRefs} reference${nRefs > 1 ? 's' : ''})` : ''} scores and maps equal the fixtures`, () => {
    const px = exp.get('pixel_values');
    const rp = exp.get('ref_pixel_values');
    const refs = nRefs ? model.referencesPixels(rp.data.subarray(0, nRefs * 3 * 48 * 48), nRefs, 48, 48) : undefined;
    let worst = 0;
    for (let b = 0; b < px.shape[0]; b++) {
      const det = model.detectPixels(mode, row(px, b).data, 48, 48, fixturePair, k, refs);
      assert.deepEqual([det.height, det.width], [48, 48]);
      worst = Math.max(worst, Math.abs(det.score - exp.get(scores).data[b]));
      worst = Math.max(worst, maxAbs(det.map(), row(exp.get(maps), b).data));
      det.free();
    }
    refs?.free();
    console.log(`wasm ${mode} (${nRefs} refs) vs fixture: max|Δ| = ${worst.toExponential(2)}`);
    assert.ok(worst <= TOL, `max|Δ| ${worst}`);
  });
}

test('wasm detectPixels rejects bad input with a message', () => {
  assert.throws(() => model.detectPixels('fast', new Float32Array(10), 48, 48, fixturePair, 0), /pixels hold 10 values/);
  assert.throws(() => model.detectPixels('nope', new Float32Array(3 * 48 * 48), 48, 48, fixturePair, 0), /unknown mode/);
  assert.throws(() => model.referencesPixels(new Float32Array(3 * 48 * 48), 0, 48, 48), /1 to 16 normal reference images, got 0/);
  assert.throws(() => model.textPair('spaceship', undefined, false), /unknown category/);
});
