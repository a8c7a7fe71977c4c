// The page's wasm API (crate/src/wasm/) on the built package (www/dist/pkg, or $ANOSCOPE_WASM_PKG):
// every method with real values, detection against the native CLI's `anoscope detect` outputs and
// prompt bundle written by tests/wasm/prepare.mjs into $ANOSCOPE_PARITY_DIR/api (default
// target/wasm-parity/api), and every bad input's message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, writeSafetensors } from './safetensors.mjs';
import { API_CASES, API_CATEGORIES, API_MODEL, apiDir, stems } from './api_cases.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const PARITY_DIR = process.env.ANOSCOPE_PARITY_DIR
  ? path.resolve(process.env.ANOSCOPE_PARITY_DIR)
  : path.join(REPO, 'target/wasm-parity');
const API = apiDir(PARITY_DIR);
const TOL = 1e-4;

const mod = await import(path.join(PKG, 'anoscope.js'));
mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });
const { ClipModel, Image, renderOverlay, limits, version } = mod;

const read = (rel) => new Uint8Array(fs.readFileSync(path.join(REPO, rel)));
function need(file) {
  if (!fs.existsSync(file)) {
    throw new Error(`${path.relative(REPO, file)} is missing: run 'node tests/wasm/prepare.mjs ${path.relative(REPO, PARITY_DIR)}' first`);
  }
  return file;
}
const MODEL_DIR = path.join(REPO, API_MODEL);
const WEIGHTS = fs.readFileSync(path.join(MODEL_DIR, 'model.safetensors'));
const WEIGHTS_SHA = crypto.createHash('sha256').update(WEIGHTS).digest('hex');
const CONFIG = fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8');
const loadModel = () => ClipModel.load('config.json', CONFIG, new Uint8Array(WEIGHTS));
const model = loadModel();
const S = model.imageSize();

function maxAbs(a, b) {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates
  }
  return m;
}

function std(a) {
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  return Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
}

/** The CLI's score and map for one image of a case. */
function cliResult(caseName, stem) {
  const json = JSON.parse(fs.readFileSync(need(path.join(API, caseName, `${stem}.json`)), 'utf8'));
  const map = readSafetensors(fs.readFileSync(path.join(API, caseName, `${stem}.map.safetensors`))).get('anomaly_map');
  return { score: json.score, map: map.data, shape: map.shape };
}

/** A PNG signature and IHDR chunk (valid CRC) claiming `w × h`, nothing else. */
function pngHeader(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const out = new Uint8Array(8 + 25);
  out.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const v = new DataView(out.buffer);
  v.setUint32(8, 13);
  out.set(new TextEncoder().encode('IHDR'), 12);
  v.setUint32(16, w);
  v.setUint32(20, h);
  out.set([8, 2, 0, 0, 0], 24); // 8-bit RGB
  v.setUint32(29, crc(out.subarray(12, 29)));
  return out;
}

test('version and limits', () => {
  const cargo = fs.readFileSync(path.join(REPO, 'crate/Cargo.toml'), 'utf8');
  assert.equal(version(), cargo.match(/^version = "([^"]+)"/m)[1]);
  assert.deepEqual(JSON.parse(limits()), {
    maxImagePixels: 64 * 1024 * 1024,
    maxBatch: 64,
    maxReferences: 16,
    maxPromptChars: 1000,
    maxPromptsPerSide: 4096,
    maxCheckpointBytes: 2 ** 30,
  });
});

test('Image.decode gives the image size; fromRgba keeps the pixels and drops alpha', () => {
  const a = Image.decode(read('tests/images/bottle_broken_large_000_64.png'));
  assert.deepEqual([a.width, a.height], [64, 64]);
  const b = Image.decode(read('tests/images/bottle_64_pil_bicubic_40x24.png'));
  assert.deepEqual([b.width, b.height], [40, 24]);
  // An S×S picture is the model input as it is: detect's input() returns its pixels.
  const rgba = new Uint8ClampedArray(S * S * 4);
  for (let i = 0; i < S * S; i++) rgba.set([(i * 7) % 256, (i * 13 + 5) % 256, (i * 29 + 11) % 256, i % 3], 4 * i);
  const img = Image.fromRgba(rgba, S, S);
  assert.deepEqual([img.width, img.height], [S, S]);
  const pair = model.textPair('bottle', undefined, false);
  const det = model.detect('fast', img, pair);
  const want = rgba.map((v, i) => (i % 4 === 3 ? 255 : v));
  assert.deepEqual(Array.from(det.input()), Array.from(want));
  for (const o of [a, b, img, det]) o.free();
});

test('Image.decode and fromRgba reject bad input with a clear message', () => {
  assert.throws(() => Image.decode(new Uint8Array(0)), /empty input \(0 bytes\) is not an image/);
  assert.throws(
    () => Image.decode(new TextEncoder().encode('this is a text file, named bottle.png by mistake\n')),
    /not a recognised image format \(expected PNG, JPEG, WebP, BMP, GIF or TIFF content\)/,
  );
  const png = read('tests/images/bottle_broken_large_000_64.png');
  assert.throws(() => Image.decode(png.subarray(0, Math.floor(png.length / 2))), (e) => {
    assert.match(e.message, /png|truncated|unexpected end|eof/i);
    return true;
  });
  assert.throws(
    () => Image.decode(pngHeader(100000, 100000)),
    /image is too large: 100000x100000 = 10000000000 pixels exceeds the limit of 67108864 pixels/,
  );
  assert.throws(() => Image.fromRgba(new Uint8Array(10), 2, 2), /the pixel buffer holds 10 bytes, but 2x2 RGBA needs 16/);
  assert.throws(() => Image.fromRgba(new Uint8Array(0), 0, 5), /positive width and height/);
  assert.throws(() => Image.fromRgba(new Uint8Array(4), 100000, 100000), /too large/);
  // The module keeps working after errors.
  assert.equal(Image.decode(png).width, 64);
});

test('ClipModel.load: sizes, and clear errors', () => {
  assert.equal(S, 32);
  assert.equal(model.hasText(), true);
  assert.equal(model.embedDim(), 48);
  assert.throws(
    () => ClipModel.load('config.json', CONFIG, new Uint8Array(100)),
    /weights: not a valid safetensors file \(truncated or corrupt\?\)/,
  );
  assert.throws(() => ClipModel.load('config.json', '{not json', new Uint8Array(WEIGHTS)), /`config.json` is not valid JSON/);
  assert.throws(() => ClipModel.load('weights.bin', CONFIG, new Uint8Array(WEIGHTS)), /unknown checkpoint layout/);
  const truncated = new Uint8Array(WEIGHTS).subarray(0, WEIGHTS.length - 1000);
  assert.throws(() => ClipModel.load('config.json', CONFIG, truncated), /not a valid safetensors file \(truncated or corrupt\?\)/);
});

test('textPair from the prompt bundle equals textPair from the text tower', () => {
  const bundle = new Uint8Array(fs.readFileSync(need(path.join(API, 'prompts.safetensors'))));
  const m = loadModel();
  const builtin = m.categories();
  assert.ok(builtin.length >= 28 && builtin.includes('bottle') && builtin.includes('object'), builtin.join());
  const tower = {
    winclip: m.textPair('bottle', undefined, false),
    descriptions: m.textPair('bottle', undefined, true),
  };
  assert.deepEqual(m.loadPrompts(bundle, WEIGHTS_SHA), API_CATEGORIES);
  assert.deepEqual(m.categories(), API_CATEGORIES);
  for (const [kind, descriptions] of [['winclip', false], ['descriptions', true]]) {
    const calls = [];
    const fromBundle = m.textPair('bottle', undefined, descriptions, undefined, () => calls.push(1));
    assert.equal(calls.length, 0, 'the bundle answers without the text tower');
    assert.equal(fromBundle.length, 96);
    const d = maxAbs(fromBundle, tower[kind]);
    console.log(`textPair(bottle, ${kind}): bundle vs text tower max|Δ| = ${d.toExponential(2)}`);
    assert.ok(d <= 1e-5, `max|Δ| ${d}`);
    // Unit rows.
    for (const r of [fromBundle.subarray(0, 48), fromBundle.subarray(48)]) {
      assert.ok(Math.abs(Math.hypot(...r) - 1) < 1e-5);
    }
  }
  assert.ok(maxAbs(tower.winclip, tower.descriptions) > 1e-3, 'descriptions change the anomalous side');
  m.free();
});

test('textPair: custom object and defects go through the text tower', () => {
  const base = model.textPair('object', undefined, false);
  const custom = model.textPair('object', 'ceramic mug', false);
  const withDefects = model.textPair('object', 'ceramic mug', false, ['a chipped rim', 'a hairline crack']);
  assert.ok(maxAbs(base, custom) > 1e-3);
  assert.ok(maxAbs(custom.subarray(0, 48), withDefects.subarray(0, 48)) < 1e-6, 'defects leave the normal side');
  assert.ok(maxAbs(custom.subarray(48), withDefects.subarray(48)) > 1e-3, 'defects change the anomalous side');
  // Progress: prompts encoded so far, in batches of 64 (147 normal, then 84 anomalous prompts).
  const calls = [];
  const again = model.textPair('object', 'ceramic mug', false, undefined, (done, total) => calls.push([done, total]));
  assert.deepEqual(calls, [[64, 231], [128, 231], [147, 231], [211, 231], [231, 231]]);
  assert.deepEqual(Array.from(again), Array.from(custom));
  assert.throws(
    () =>
      model.textPair('object', 'ceramic mug', false, undefined, (done) => {
        if (done > 100) throw new Error('cancelled by the user');
      }),
    /prompt encoding stopped: cancelled by the user/,
  );
  assert.throws(() => model.textPair('spaceship', undefined, false), /unknown category `spaceship` \(known: .*bottle/);
  assert.throws(() => model.textPair('object', 'x'.repeat(1001), false), /too long: 1001 characters \(at most 1000\)/);
  assert.throws(() => model.textPair('object', 'mug', false, ['a dent', 'a dent']), /twice/);
});

test('textPair without a text tower: the bundle answers, custom prompts say why they cannot', () => {
  const t = readSafetensors(WEIGHTS);
  const vision = {};
  for (const [name, v] of t) {
    if (name.startsWith('text_model.') || name === 'text_projection.weight') continue;
    vision[name] = { dtype: 'F32', shape: v.shape, data: Float32Array.from(v.data) };
  }
  const bytes = writeSafetensors(vision);
  const m = ClipModel.load('config.json', CONFIG, bytes);
  assert.equal(m.hasText(), false);
  assert.throws(() => m.textPair('bottle', undefined, false), /this checkpoint has no text tower; custom prompts need one/);
  // A vision-only copy of the same weights: the bundle built for the full checkpoint still fits
  // when no sha256 is given (the caller vouches for it).
  const bundle = new Uint8Array(fs.readFileSync(need(path.join(API, 'prompts.safetensors'))));
  m.loadPrompts(bundle, undefined);
  const pair = m.textPair('bottle', undefined, false);
  assert.ok(maxAbs(pair, model.textPair('bottle', undefined, false)) <= 1e-5);
  assert.throws(() => m.textPair('bottle', 'mug', false), /no text tower/);
  m.free();
});

test('loadPrompts rejects a bundle for another model with a clear message and keeps the loaded one', () => {
  const bytes = new Uint8Array(fs.readFileSync(need(path.join(API, 'prompts.safetensors'))));
  const m = loadModel();
  const other = '0'.repeat(64);
  assert.throws(
    () => m.loadPrompts(bytes, other),
    new RegExp(`this prompt file was built for another model \\(sha256 ${WEIGHTS_SHA}\\), not this checkpoint \\(sha256 ${other}\\)`),
  );
  assert.throws(() => m.loadPrompts(bytes, 'abc'), /sha256 must be 64 hex digits/);
  // The same bundle re-written with 32-dimensional embeddings.
  const t = readSafetensors(bytes);
  const index = JSON.parse(t.metadata.anoscope_prompts);
  index.embed_dim = 32;
  const small = {};
  for (const [name, v] of t) {
    const d = new Float32Array(64);
    d[0] = 1;
    d[33] = 1;
    small[name] = { dtype: 'F32', shape: [2, 32], data: d };
  }
  const wrongDim = writeSafetensors(small, { anoscope_prompts: JSON.stringify(index) });
  assert.throws(
    () => m.loadPrompts(wrongDim, undefined),
    /this prompt file was built for another model: its text embeddings have 32 dimensions, this checkpoint's have 48/,
  );
  assert.throws(
    () => m.loadPrompts(new TextEncoder().encode('not a prompt file'), undefined),
    /not a valid safetensors prompt file \(truncated or corrupt\?\)/,
  );
  // Nothing was loaded by the failures; a good load then works.
  assert.ok(m.categories().length >= 28);
  assert.deepEqual(m.loadPrompts(bytes, WEIGHTS_SHA.toUpperCase()), API_CATEGORIES);
  assert.throws(() => m.loadPrompts(wrongDim, undefined), /32 dimensions/);
  assert.deepEqual(m.categories(), API_CATEGORIES);
  m.free();
});

for (const c of API_CASES.filter((c) => c.mode !== 'batch')) {
  test(`detect(${c.mode}) equals anoscope detect --mode ${c.mode}`, () => {
    const pair = model.textPair('bottle', undefined, false);
    const refs = c.refs ? model.references(c.refs.map((p) => Image.decode(read(p)))) : undefined;
    if (refs) assert.equal(refs.length, c.refs.length);
    let worst = 0;
    stems(c.images).forEach((stem, i) => {
      const img = Image.decode(read(c.images[i]));
      const t0 = performance.now();
      const det = model.detect(c.mode, img, pair, refs);
      const ms = performance.now() - t0;
      const want = cliResult(c.name, stem);
      assert.deepEqual([det.height, det.width], want.shape);
      assert.deepEqual([det.width, det.height], [S, S]);
      const map = det.map();
      assert.equal(map.length, S * S);
      assert.ok(map.every((v) => v >= 0 && v <= 1), 'map in [0, 1]');
      assert.ok(std(map) > 1e-4, 'the map is not uniform');
      assert.ok(det.score >= 0 && det.score <= 1);
      assert.equal(det.input().length, S * S * 4);
      worst = Math.max(worst, Math.abs(det.score - want.score), maxAbs(map, want.map));
      console.log(`${c.mode} ${stem}: score ${det.score.toFixed(4)} (CLI ${want.score.toFixed(4)}), ${ms.toFixed(0)} ms`);
      det.free();
      img.free();
    });
    console.log(`detect(${c.mode}) vs CLI: max|Δ| = ${worst.toExponential(2)}`);
    assert.ok(worst <= TOL, `max|Δ| ${worst}`);
    refs?.free();
  });
}

test('detect rejects bad input with a clear message', () => {
  const img = Image.decode(read('tests/images/bottle_broken_large_000_64.png'));
  const pair = model.textPair('bottle', undefined, false);
  assert.throws(() => model.detect('nope', img, pair), /unknown mode `nope` \(fast, winclip, fewshot, batch, anomalyclip, adaptclip\)/);
  assert.throws(() => model.detect('batch', img, pair), /call batch\(images\)/);
  assert.throws(() => model.detect('fast', img, new Float32Array(10)), /class pair must hold 2×48 values .*got 10/);
  assert.throws(() => model.detect('fewshot', img, pair), /few-shot mode needs normal reference images/);
  assert.throws(() => model.detect('fewshot', img, pair, { handle: 'x' }), /must be a References object/);
  const refs = model.references([Image.decode(read('tests/data/tiny_mvtec/bottle/train/good/000.png'))]);
  const other = loadModel();
  assert.throws(() => other.detect('fewshot', img, pair, refs), /embedded by another model/);
  other.free();
  assert.ok(model.detect('fewshot', img, pair, refs).score > 0);
  refs.free();
  assert.throws(() => model.detect('fewshot', img, pair, refs), /these reference images were released \(free\(\)\); call references\(images\) again/);
  assert.throws(() => model.references([]), /1 to 16 normal reference images, got 0/);
  // Still working.
  assert.ok(model.detect('fast', img, pair).score > 0);
});

test('batch equals anoscope detect --mode batch (maps on one [0, 1] range) and reports progress', () => {
  const c = API_CASES.find((c) => c.mode === 'batch');
  const images = c.images.map((p) => Image.decode(read(p)));
  const calls = [];
  const res = model.batch(images, (done, total, stage) => calls.push([done, total, stage]));
  assert.equal(res.length, c.images.length);
  const want = stems(c.images).map((s) => cliResult(c.name, s));
  const scores = res.scores();
  const dScore = maxAbs(scores, want.map((w) => w.score));
  let lo = Infinity;
  let hi = -Infinity;
  for (const w of want) for (const v of w.map) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  assert.ok(hi > lo);
  let dMap = 0;
  for (let i = 0; i < res.length; i++) {
    const d = res.detection(i);
    assert.deepEqual([d.width, d.height], [S, S]);
    assert.equal(d.score, scores[i]);
    dMap = Math.max(dMap, maxAbs(d.map(), Float32Array.from(want[i].map, (v) => (v - lo) / (hi - lo))));
    assert.equal(d.input().length, S * S * 4);
  }
  console.log(`batch vs CLI: scores max|Δ| = ${dScore.toExponential(2)}, maps max|Δ| = ${dMap.toExponential(2)}`);
  assert.ok(dScore <= TOL && dMap <= TOL, `${dScore} ${dMap}`);
  // hf_tiny: 6 images encoded, then 3 r × 3 layers scored.
  assert.deepEqual(
    calls,
    Array.from({ length: 15 }, (_, i) => [i + 1, 15, i < 6 ? 'encoding' : 'scoring']),
  );
  assert.throws(() => res.detection(6), /no image 6 in this batch of 6/);
  res.free();
});

test('batch rejects bad input and stops when progress throws', () => {
  const img = () => Image.decode(read('tests/data/tiny_mvtec/bottle/test/good/000.png'));
  assert.throws(() => model.batch([img()]), /scores 2 to 64 images together, got 1/);
  assert.throws(
    () =>
      model.batch([img(), img(), img()], (done) => {
        if (done === 2) throw new Error('cancelled by the user');
      }),
    /batch stopped: cancelled by the user/,
  );
  const ok = model.batch([img(), img()]);
  assert.equal(ok.length, 2);
});

test('renderOverlay: opacity 0 is the input, 1 the inferno colours, threshold outlines in cyan', () => {
  const w = 6;
  const h = 5;
  const input = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) input.set([i * 8, 255 - i * 8, (i * 37) % 256, 7], 4 * i);
  const map = new Float32Array(w * h);
  // matplotlib's inferno at 0, 0.25, 0.5, 0.75 and 1 (entries 0, 64, 128, 192, 255).
  const inferno = [
    [0, [0, 0, 4]],
    [0.25, [87, 16, 110]],
    [0.5, [188, 55, 84]],
    [0.75, [249, 142, 9]],
    [1, [252, 255, 164]],
  ];
  inferno.forEach(([v], i) => (map[i] = v));
  const rgb = (a, i) => Array.from(a.subarray(4 * i, 4 * i + 4));
  const zero = renderOverlay(input, map, w, h, 0, NaN);
  for (let i = 0; i < w * h; i++) assert.deepEqual(rgb(zero, i), [...rgb(input, i).slice(0, 3), 255]);
  const one = renderOverlay(input, map, w, h, 1, NaN);
  inferno.forEach(([, c], i) => assert.deepEqual(rgb(one, i), [...c, 255]));
  const half = renderOverlay(input, map, w, h, 0.5, NaN);
  assert.deepEqual(rgb(half, 4), [0, 1, 2].map((k) => Math.round(input[16 + k] + (inferno[4][1][k] - input[16 + k]) * 0.5)).concat(255));

  // A 3×3 block of 0.9 at x 1..3, y 1..3: its border pixels are outlined, its centre and the rest not.
  const block = new Float32Array(w * h).fill(0.1);
  for (let y = 1; y <= 3; y++) for (let x = 1; x <= 3; x++) block[y * w + x] = 0.9;
  const out = renderOverlay(input, block, w, h, 0.5, 0.5);
  const plain = renderOverlay(input, block, w, h, 0.5, Infinity);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const inBlock = x >= 1 && x <= 3 && y >= 1 && y <= 3;
      const border = inBlock && !(x === 2 && y === 2);
      if (border) assert.deepEqual(rgb(out, i), [0, 255, 255, 255], `(${x}, ${y}) outlined`);
      else assert.deepEqual(rgb(out, i), rgb(plain, i), `(${x}, ${y}) not outlined`);
    }
  }
  assert.ok(!Array.from({ length: w * h }, (_, i) => rgb(plain, i).join()).includes('0,255,255,255'));

  assert.throws(() => renderOverlay(input, map.subarray(1), w, h, 0.5, NaN), /anomaly map holds 29 values, but the image is 6x5 = 30 pixels/);
  assert.throws(() => renderOverlay(input.subarray(4), map, w, h, 0.5, NaN), /the image holds 116 bytes, but 6x5 RGBA needs 120/);
  assert.throws(() => renderOverlay(input, map, w, h, 2, NaN), /opacity must be a number from 0 to 1, got 2/);
});

test('a detection drawn with renderOverlay holds a non-uniform heatmap', () => {
  const img = Image.decode(read('tests/images/bottle_broken_large_000_64.png'));
  const det = model.detect('fast', img, model.textPair('bottle', undefined, false));
  const rgba = renderOverlay(det.input(), det.map(), det.width, det.height, 1, NaN);
  assert.equal(rgba.length, S * S * 4);
  const colours = new Set();
  for (let i = 0; i < S * S; i++) colours.add(rgba.subarray(4 * i, 4 * i + 3).join());
  assert.ok(colours.size > 10, `${colours.size} colours`);
});

// The asynchronous (WebGPU) API. Node has no WebGPU: useGpu rejects and the *Async calls run the
// same detection code on the CPU, so they must equal the synchronous calls exactly.
test('useGpu rejects without WebGPU; detectAsync, referencesAsync, batchAsync equal the synchronous calls', async () => {
  if (!model.useGpu) {
    console.log('this package has no WebGPU API (built without the gpu feature)');
    return;
  }
  const m = loadModel();
  await assert.rejects(m.useGpu(), /no WebGPU here \(navigator\.gpu is missing\)/);
  assert.equal(m.gpuActive(), false);
  assert.equal(m.gpuFailure(), undefined);
  const pair = m.textPair('bottle', undefined, false);
  const file = 'tests/images/bottle_broken_large_000_64.png';
  const refImg = () => Image.decode(read('tests/data/tiny_mvtec/bottle/train/good/000.png'));
  const refs = m.references([refImg()]);
  const refsAsync = await m.referencesAsync([refImg()]);
  assert.equal(refsAsync.length, 1);
  for (const mode of ['fast', 'winclip', 'fewshot']) {
    const img = Image.decode(read(file));
    const a = m.detect(mode, img, pair, refs);
    const b = await m.detectAsync(mode, img, pair, refsAsync);
    assert.equal(b.score, a.score, mode);
    assert.equal(maxAbs(b.map(), a.map()), 0, mode);
    assert.deepEqual(b.input(), a.input());
    img.free();
  }
  const img = Image.decode(read(file));
  await assert.rejects(m.detectAsync('nope', img, pair), /unknown mode `nope`/);
  await assert.rejects(m.detectAsync('fewshot', img, pair), /few-shot mode needs normal reference images/);
  const batchImgs = () => ['000', '001', '002'].map((s) => Image.decode(read(`tests/data/tiny_mvtec/bottle/test/good/${s}.png`)));
  const calls = [];
  const x = m.batch(batchImgs());
  const y = await m.batchAsync(batchImgs(), (done, total, stage) => calls.push([done, total, stage]));
  assert.deepEqual(Array.from(y.scores()), Array.from(x.scores()));
  assert.equal(maxAbs(y.detection(1).map(), x.detection(1).map()), 0);
  assert.equal(calls.at(-1)[0], calls.at(-1)[1]);
  await assert.rejects(m.batchAsync([Image.decode(read(file))]), /scores 2 to 64 images together, got 1/);
  img.free();
  m.free();
});
