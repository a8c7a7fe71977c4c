// The learned modes in wasm (the browser path, issue 17): `loadLearned` with the converted
// learned files of the tiny fixtures, then `detectPixels('anomalyclip' | 'adaptclip', …)`
// (zero-shot) against the official code's outputs (tests/fixtures/{anomalyclip,adaptclip}_tiny_
// expected.safetensors), ≤ 1e-4; and their bad inputs.
// The learned file is converted by the native CLI (`anoscope convert --learned`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, row, writeSafetensors } from './safetensors.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const CLI = path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'debug', 'anoscope');
const FIXTURE = path.join(REPO, 'tests/fixtures/anomalyclip_tiny');
const TOL = 1e-4;

const mod = await import(path.join(PKG, 'anoscope.js'));
mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });
const load = (dir = FIXTURE) =>
  mod.ClipModel.load(
    'open_clip_config.json',
    fs.readFileSync(path.join(dir, 'open_clip_config.json'), 'utf8'),
    new Uint8Array(fs.readFileSync(path.join(dir, 'open_clip_model.safetensors'))),
  );
const exp = readSafetensors(fs.readFileSync(path.join(REPO, 'tests/fixtures/anomalyclip_tiny_expected.safetensors')));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'anoscope-wasm-learned-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const pth = path.join(FIXTURE, 'learned.pth');
// Without --model: the learned tensors only (the text tower computes the class pair, in f32).
const plain = path.join(tmp, 'plain.safetensors');
execFileSync(CLI, ['convert', '--learned', pth, '--out', plain]);

// AdaptCLIP's conversion (f32, with its class pairs) for the model its fixture belongs to.
const DPAM = path.join(REPO, 'tests/fixtures/anomalyclip_tiny'); // AdaptCLIP's fixture model too
const adapt = path.join(tmp, 'adaptclip.safetensors');
execFileSync(CLI, ['convert', '--learned', path.join(REPO, 'tests/fixtures/adaptclip_tiny/learned.pth'), '--model', DPAM, '--dtype', 'f32', '--out', adapt]);

/** AdaptCLIP's conversion as for a model with twice the embedding width (its class pairs
 * zero-padded to [2, 2P]): another model's file (both learned fixtures share one model). */
function otherModelsAdapt() {
  const t = readSafetensors(fs.readFileSync(adapt));
  for (const k of ['adaptclip.learned_text', 'adaptclip.static_text']) {
    const v = t.get(k);
    const [r, c] = v.shape;
    const data = new Float32Array(r * 2 * c);
    for (let i = 0; i < r; i++) data.set(v.data.subarray(i * c, (i + 1) * c), i * 2 * c);
    t.set(k, { ...v, shape: [r, 2 * c], data });
  }
  return writeSafetensors(Object.fromEntries(t));
}

function maxAbs(a, b) {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A safetensors file holding one f32 tensor `name` [1]. */
function oneTensor(name) {
  const header = Buffer.from(JSON.stringify({ [name]: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return new Uint8Array(Buffer.concat([len, header, Buffer.alloc(4)]));
}

test('wasm anomalyclip (loadLearned + detectPixels) equals the official code', () => {
  const model = load();
  assert.equal(model.learnedSize(), 0);
  assert.equal(model.loadLearned(new Uint8Array(fs.readFileSync(plain)), 42), 'anomalyclip');
  assert.equal(model.learnedSize(), 42);
  const px = exp.get('pixel_values');
  let worst = 0;
  for (let b = 0; b < px.shape[0]; b++) {
    // The class pair argument is not used by the learned mode.
    const det = model.detectPixels('anomalyclip', row(px, b).data, 42, 42, new Float32Array(0), 0, undefined);
    assert.deepEqual([det.height, det.width], [42, 42]);
    worst = Math.max(worst, Math.abs(det.score - exp.get('scores').data[b]));
    worst = Math.max(worst, maxAbs(det.map(), row(exp.get('maps'), b).data));
    det.free();
  }
  console.log(`wasm anomalyclip vs the official code: max|Δ| = ${worst.toExponential(2)}`);
  assert.ok(worst <= TOL, `max|Δ| ${worst}`);
  model.free();
});

test('wasm adaptclip zero-shot (loadLearned + detectPixels) equals the official code', () => {
  const model = load(DPAM);
  const ex = readSafetensors(fs.readFileSync(path.join(REPO, 'tests/fixtures/adaptclip_tiny_expected.safetensors')));
  assert.equal(model.loadLearned(new Uint8Array(fs.readFileSync(adapt)), 70), 'adaptclip');
  const px = ex.get('pixel_values');
  let worst = 0;
  for (let b = 0; b < px.shape[0]; b++) {
    const det = model.detectPixels('adaptclip', row(px, b).data, 70, 70, new Float32Array(0), 0, undefined);
    assert.deepEqual([det.height, det.width], [70, 70]);
    worst = Math.max(worst, Math.abs(det.score - ex.get('score_zero').data[b]));
    worst = Math.max(worst, maxAbs(det.map(), row(ex.get('map_zero'), b).data));
    det.free();
  }
  console.log(`wasm adaptclip zero-shot vs the official code: max|Δ| = ${worst.toExponential(2)}`);
  assert.ok(worst <= TOL, `max|Δ| ${worst}`);
  assert.throws(
    () => model.detectPixels('anomalyclip', row(px, 0).data, 70, 70, new Float32Array(0), 0, undefined),
    /the loaded learned file is for the adaptclip mode, not anomalyclip/,
  );
  model.free();
});

test('wasm detect("anomalyclip") resizes to the learned size', () => {
  const model = load();
  model.loadLearned(new Uint8Array(fs.readFileSync(plain)), 35);
  const rgba = new Uint8Array(50 * 20 * 4).map((_, i) => (i * 37) % 251);
  const image = mod.Image.fromRgba(rgba, 50, 20);
  const det = model.detect('anomalyclip', image, new Float32Array(0), undefined);
  assert.deepEqual([det.width, det.height], [35, 35]);
  assert.equal(det.map().length, 35 * 35);
  assert.ok(det.score >= 0 && det.score <= 1, `${det.score}`);
  det.free();
  image.free();
  model.free();
});

test('wasm learned-mode bad inputs give clear errors and keep the loaded file', () => {
  const model = load();
  const px = new Float32Array(3 * 42 * 42);
  assert.throws(
    () => model.detectPixels('anomalyclip', px, 42, 42, new Float32Array(0), 0, undefined),
    /anomalyclip mode needs its learned file: load it first/,
  );
  assert.throws(() => model.loadLearned(new Uint8Array(fs.readFileSync(pth))), /torch checkpoint \(\.pth\).*anoscope convert --learned/);
  assert.throws(() => model.loadLearned(new Uint8Array([1, 2, 3])), /not a valid safetensors file/);
  assert.throws(() => model.loadLearned(oneTensor('adaptclip.static_text')), /not AdaptCLIP parameters for this model/);
  assert.throws(() => model.loadLearned(otherModelsAdapt()), /not AdaptCLIP parameters for this model: `adaptclip\.static_text` has shape \[2, 32\], expected \[2, 16\]/, 'another model\'s file');
  assert.throws(() => model.loadLearned(new Uint8Array(fs.readFileSync(plain)), 0), /size must be in 1\.\.=4096/);
  assert.equal(model.learnedSize(), 0, 'nothing was loaded');
  model.loadLearned(new Uint8Array(fs.readFileSync(plain)));
  assert.equal(model.learnedSize(), 518, 'the official size by default');
  assert.throws(() => model.loadLearned(oneTensor('x')), /the learned file/);
  assert.equal(model.learnedSize(), 518, 'a bad file leaves the loaded one');
  assert.throws(
    () => model.detectTiled('anomalyclip', mod.Image.fromRgba(new Uint8Array(16 * 16 * 4), 16, 16), new Float32Array(0), undefined, 'auto', 0),
    /not tiled in the page yet/,
  );
  assert.throws(() => model.detectPixels('adaptclip', px, 42, 42, new Float32Array(0), 0, undefined), /the loaded learned file is for the anomalyclip mode, not adaptclip/);
  model.free();
});
