// The page's streaming checkpoint loader (ClipLoader) on the built package: any chunking gives
// the same model as ClipModel.load (bit for bit: same embeddings, same fast-mode score), a
// vision-first file is usable before its text tower arrives, the text tower loads separately,
// broken streams give ClipModel.load's messages, and sha256 is the file's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const mod = await import(path.join(PKG, 'anoscope.js'));
mod.initSync({ module: fs.readFileSync(path.join(PKG, 'anoscope_bg.wasm')) });
const { ClipModel, ClipLoader, Image } = mod;

const DIR = path.join(REPO, 'tests/fixtures/hf_tiny');
const WEIGHTS = new Uint8Array(fs.readFileSync(path.join(DIR, 'model.safetensors')));
const CONFIG = fs.readFileSync(path.join(DIR, 'config.json'), 'utf8');
const IMAGE = new Uint8Array(fs.readFileSync(path.join(REPO, 'tests/images/bottle_broken_large_000_64.png')));

/** The same file with the image tower's data first (as `anoscope convert` writes it). */
function visionFirst(bytes) {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const data = bytes.subarray(8 + n);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const vision = (k) => /^(vision_model\.|visual_projection\.|visual\.)/.test(k) || k === 'logit_scale';
  names.sort((a, b) => Number(vision(b)) - Number(vision(a)) || (a < b ? -1 : 1));
  const out = {};
  const parts = [];
  let at = 0;
  for (const k of names) {
    const [s, e] = header[k].data_offsets;
    out[k] = { ...header[k], data_offsets: [at, at + e - s] };
    parts.push(data.subarray(s, e));
    at += e - s;
  }
  let json = JSON.stringify(out);
  while (json.length % 8) json += ' ';
  const head = new Uint8Array(8);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  return Buffer.concat([head, Buffer.from(json), ...parts]);
}

/** Streams `bytes` in chunks of `size`; returns {model, readyAt (bytes in when the image tower was)}. */
function stream(bytes, size, { text = true, declared = true } = {}) {
  const l = new ClipLoader('config.json', CONFIG, 'weights', declared ? bytes.length : undefined, true, text);
  let model = null;
  let readyAt = null;
  try {
    for (let at = 0; at < bytes.length; at += size) {
      l.push(bytes.subarray(at, at + size));
      if (!model && l.visionReady()) {
        model = l.takeModel();
        readyAt = Math.min(at + size, bytes.length);
        assert.equal(model.hasText(), false);
      }
    }
    l.finish();
    if (!model) model = l.takeModel();
    if (text) l.attachText(model);
    return { model, readyAt, sha: l.sha256(), hasTextInFile: l.fileHasText() };
  } finally {
    l.free();
  }
}

const embeds = (m) => Buffer.from(m.embedImage(new Float32Array(3 * 32 * 32).map((_, i) => Math.sin(i)), 32, 32, 1));
const whole = ClipModel.load('config.json', CONFIG, WEIGHTS);
const wantImage = embeds(whole);
const wantText = Buffer.from(whole.embedText(['a photo of a bottle.']));
const wantPair = whole.textPair('bottle', undefined, false, undefined, undefined);

function fastScore(m, pair) {
  const img = Image.decode(IMAGE);
  try {
    const d = m.detect('fast', img, pair, undefined);
    const out = { score: d.score, map: Buffer.from(d.map().buffer) };
    d.free();
    return out;
  } finally {
    img.free();
  }
}
const wantScore = fastScore(whole, wantPair);

test('any chunking loads the model ClipModel.load gives, bit for bit', () => {
  for (const size of [1000, 4099, 65536, WEIGHTS.length]) {
    for (const declared of [true, false]) {
      const { model, sha } = stream(WEIGHTS, size, { declared });
      assert.ok(embeds(model).equals(wantImage), `image, chunks of ${size}`);
      assert.ok(Buffer.from(model.embedText(['a photo of a bottle.'])).equals(wantText), `text, chunks of ${size}`);
      assert.equal(sha, crypto.createHash('sha256').update(WEIGHTS).digest('hex'));
      model.free();
    }
  }
});

test('vision first: the image tower scores before the text tower arrives; text-first files at the end', () => {
  const vf = visionFirst(WEIGHTS);
  const early = stream(vf, 8192);
  assert.ok(early.readyAt < vf.length / 2, `ready at ${early.readyAt} of ${vf.length}`);
  const late = stream(WEIGHTS, 8192);
  assert.equal(late.readyAt, WEIGHTS.length);
  for (const { model } of [early, late]) {
    assert.ok(embeds(model).equals(wantImage));
    const s = fastScore(model, wantPair);
    assert.equal(s.score, wantScore.score);
    assert.ok(s.map.equals(wantScore.map));
    model.free();
  }
});

test('the text tower loads separately (the page: only for custom prompts)', () => {
  const { model, hasTextInFile } = stream(visionFirst(WEIGHTS), 5000, { text: false });
  assert.equal(model.hasText(), false);
  assert.equal(hasTextInFile, true);
  assert.ok(embeds(model).equals(wantImage));
  assert.throws(() => model.embedText(['x']), /no text tower/);
  const l = new ClipLoader('config.json', CONFIG, 'weights', WEIGHTS.length, false, true);
  for (let at = 0; at < WEIGHTS.length; at += 3333) l.push(WEIGHTS.subarray(at, at + 3333));
  l.finish();
  assert.equal(l.visionReady(), false);
  assert.equal(l.textReady(), true);
  l.attachText(model);
  l.free();
  assert.equal(model.hasText(), true);
  assert.ok(Buffer.from(model.embedText(['a photo of a bottle.'])).equals(wantText));
  model.free();
});

test("broken streams give ClipModel.load's messages", () => {
  const cases = [
    WEIGHTS.subarray(0, 5),
    WEIGHTS.subarray(0, 100),
    WEIGHTS.subarray(0, WEIGHTS.length - 1000),
    Buffer.concat([WEIGHTS, Buffer.alloc(7)]),
    Buffer.from('not a checkpoint at all'),
  ];
  const bad = Buffer.from(WEIGHTS);
  bad[8] = '['.charCodeAt(0);
  cases.push(bad);
  for (const b of cases) {
    let want;
    assert.throws(() => ClipModel.load('config.json', CONFIG, b), (e) => ((want = e.message), true));
    for (const declared of [true, false]) {
      const l = new ClipLoader('config.json', CONFIG, 'weights', declared ? b.length : undefined, true, true);
      assert.throws(
        () => {
          for (let at = 0; at < b.length; at += 777) l.push(b.subarray(at, at + 777));
          l.finish();
        },
        (e) => e.message === want,
        `${b.length} bytes, declared ${declared}: want ${want}`,
      );
      l.free();
    }
  }
  assert.throws(() => new ClipLoader('config.json', CONFIG, 'weights', 2 ** 31, true, true), /more than the 1024 MiB/);
  assert.throws(() => new ClipLoader('config.json', CONFIG, 'weights', 0, true, true), /empty/);
});
