// Photo-true results through the wasm API (crate/src/wasm/photo.rs) on the built package
// (www/dist/pkg, or $ANOSCOPE_WASM_PKG): the worked examples of the Rust unit tests, and
// ClipModel.detectTiled on a real 250×627 KolektorSDD strip against the native CLI's
// `anoscope detect --tiles auto --full-map` (run here; the CLI is $ANOSCOPE_CLI, else
// $CARGO_TARGET_DIR/debug/anoscope, default target/debug/anoscope).
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
const { ClipModel, Image, photoMap, boundedSize, regions, tilePlan, stitchTiles, combineScores } = mod;

const MODEL_DIR = path.join(REPO, 'tests/fixtures/hf_tiny');
const STRIP = 'tests/images/ksdd_defect_134.png';
const maxAbs = (a, b) => {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

test('photoMap: a 2×2 map onto a 6×4 photo, by hand; bounded maps keep the aspect', () => {
  const m = photoMap(new Float32Array([0, 1, 2, 3]), 2, 2, 6, 4, 0);
  assert.equal(m.width, 6);
  assert.equal(m.height, 4);
  const v = m.map();
  // x reads 0, 0, 1/3, 2/3, 1, 1; y reads 0, 1/4, 3/4, 1; value = x + 2y.
  assert.ok(Math.abs(v[1 * 6 + 2] - (1 / 3 + 0.5)) < 1e-6, `${v[8]}`);
  assert.deepEqual([v[0], v[5], v[18], v[23]], [0, 1, 2, 3]);
  const b = photoMap(new Float32Array(16).fill(0.25), 4, 4, 8000, 2000, 400);
  assert.deepEqual([b.width, b.height, b.map().length], [400, 100, 40000]);
  assert.ok(b.map().every((x) => x === 0.25));
  assert.deepEqual(Array.from(boundedSize(6000, 4000, 4096)), [4096, 2731]);
  assert.deepEqual(Array.from(boundedSize(250, 627, 0)), [250, 627]);
  assert.throws(() => photoMap(new Float32Array(3), 2, 2, 6, 4, 0), /anomaly map has 3 values/);
  assert.throws(() => boundedSize(0, 5, 10), /positive size/);
});

test('regions: two blobs, 8-connected, by decreasing peak', () => {
  // 0.5 0.5 . . . . .   .
  // 0.5 0.6 . . . . 0.8 .
  // .   .   . . . . 0.9 0.9
  // .   .   . . . . 0.7 .
  const map = new Float32Array(32);
  for (const [x, y, v] of [[0, 0, 0.5], [1, 0, 0.5], [0, 1, 0.5], [1, 1, 0.6], [6, 1, 0.8], [6, 2, 0.9], [7, 2, 0.9], [6, 3, 0.7]]) {
    map[y * 8 + x] = v;
  }
  const r = JSON.parse(regions(map, 8, 4, 0.5, 1));
  assert.equal(r.length, 2);
  assert.deepEqual(r[0].bbox, [6, 1, 2, 3]);
  assert.deepEqual(r[0].peak_xy, [6, 2]);
  assert.equal(r[0].area_px, 4);
  assert.equal(r[0].area_pct, 12.5);
  assert.ok(Math.abs(r[0].peak - 0.9) < 1e-6);
  assert.deepEqual(r[1].bbox, [0, 0, 2, 2]);
  assert.ok(Math.abs(r[1].mean - 0.525) < 1e-6);
  assert.deepEqual(JSON.parse(regions(map, 8, 4, 0.95, 1)), []);
  assert.throws(() => regions(map, 7, 4, 0.5, 1), /has 32 values, not 7x4/);
});

test('tilePlan, stitchTiles and combineScores: the worked examples', () => {
  const p = JSON.parse(tilePlan('auto', 250, 627, 224));
  assert.deepEqual([p.rows, p.cols], [4, 2]);
  assert.deepEqual(p.tiles.slice(0, 2).map((t) => t.x), [0, 26]);
  assert.deepEqual(p.tiles.filter((_, i) => i % 2 === 0).map((t) => t.y), [0, 134, 269, 403]);
  assert.ok(p.tiles.every((t) => t.w === 224 && t.h === 224));
  assert.equal(JSON.parse(tilePlan('off', 4000, 3000, 224)).tiles.length, 1);
  assert.throws(() => tilePlan('1x3', 250, 627, 224), /cannot be covered/);
  assert.throws(() => tilePlan('big', 250, 627, 224), /`auto`, `off` or ROWSxCOLS/);
  // Two 8-px tiles overlapping on x = 4..7 of a 12×8 photo; maps 0 and 1.
  const plan = JSON.stringify({ width: 12, height: 8, rows: 1, cols: 2, tiles: [{ x: 0, y: 0, w: 8, h: 8 }, { x: 4, y: 0, w: 8, h: 8 }] });
  const maps = new Float32Array(8);
  maps.fill(1, 4);
  const out = stitchTiles(plan, maps, 2, 2, 12, 8);
  const row = Array.from(out.slice(0, 12));
  const want = [0, 0, 0, 0, 0.2, 3 / 7, 4 / 7, 0.8, 1, 1, 1, 1];
  assert.ok(maxAbs(row, want) < 1e-6, `${row}`);
  assert.throws(() => stitchTiles(plan, maps.subarray(1), 2, 2, 12, 8), /maps hold 7 values/);
  assert.throws(() => stitchTiles('{}', maps, 2, 2, 12, 8), /not a tile plan/);
  assert.ok(Math.abs(combineScores(0.3, new Float32Array([0.1, 0.9, 0.5])) - 0.6) < 1e-7);
  assert.ok(Math.abs(combineScores(0.3, new Float32Array([])) - 0.3) < 1e-7);
});

test('detectTiled on a real 250×627 strip equals the native CLI (stitched map ≤ 1e-5), off equals detect', () => {
  if (!fs.existsSync(CLI)) throw new Error(`native CLI ${CLI} missing: cargo build -p anoscope --bin anoscope (or set ANOSCOPE_CLI)`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'anoscope-tiles-'));
  try {
    execFileSync(CLI, ['detect', '--model', MODEL_DIR, '--category', 'bottle', '--mode', 'fast', '--backend', 'cpu', '--tiles', 'auto', '--full-map', '--out', tmp, STRIP], {
      cwd: REPO,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const native = JSON.parse(fs.readFileSync(path.join(tmp, 'ksdd_defect_134.json'), 'utf8'));
    const nativeMaps = readSafetensors(fs.readFileSync(path.join(tmp, 'ksdd_defect_134.map.safetensors')));
    const model = ClipModel.load('config.json', fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8'), new Uint8Array(fs.readFileSync(path.join(MODEL_DIR, 'model.safetensors'))));
    const pair = model.textPair('bottle', undefined, false);
    const img = Image.decode(new Uint8Array(fs.readFileSync(path.join(REPO, STRIP))));
    const calls = [];
    const r = model.detectTiled('fast', img, pair, undefined, 'auto', 0, (done, total) => calls.push([done, total]));
    const plan = JSON.parse(r.plan);
    assert.ok(plan.tiles.length > 1, 'the strip is tiled');
    assert.deepEqual(plan.tiles, native.tiles.tiles);
    const total = plan.tiles.length + 1;
    assert.deepEqual(calls, Array.from({ length: total }, (_, i) => [i + 1, total]));
    assert.deepEqual([r.width, r.height], [250, 627]);
    assert.ok(Math.abs(r.score - native.score) <= 1e-5, `${r.score} vs ${native.score}`);
    assert.ok(Math.abs(r.wholeScore - native.tiles.whole_score) <= 1e-5);
    assert.ok(maxAbs(r.tileScores(), native.tiles.tile_scores) <= 1e-5);
    const full = nativeMaps.get('anomaly_map_full');
    assert.deepEqual(full.shape, [627, 250]);
    const d = maxAbs(r.map(), full.data);
    console.log(`detectTiled vs CLI: stitched map max|Δ| = ${d.toExponential(2)}`);
    assert.ok(d <= 1e-5, `stitched map max|Δ| = ${d}`);
    // The page's regions function on the CLI's full map gives the CLI's regions exactly.
    const mine = JSON.parse(regions(full.data, 250, 627, 0.5, 1));
    assert.equal(mine.length, native.regions.length);
    mine.forEach((m, i) => {
      const n = native.regions[i];
      assert.deepEqual([m.bbox, m.peak_xy, m.area_px], [n.bbox, n.peak_xy, n.area_px], `region ${i}`);
      assert.ok(Math.abs(m.area_pct - n.area_pct) < 1e-9 && Math.abs(m.peak - n.peak) < 1e-6 && Math.abs(m.mean - n.mean) < 1e-6);
    });
    // `off` is today's detect, exactly.
    const off = model.detectTiled('fast', img, pair, undefined, 'off', 0, undefined);
    const det = model.detect('fast', img, pair);
    assert.equal(off.score, det.score);
    assert.deepEqual(Array.from(off.inputMap()), Array.from(det.map()));
    assert.deepEqual(Array.from(off.tileScores()), []);
    // A throwing progress callback stops the run between tiles.
    let n = 0;
    assert.throws(
      () =>
        model.detectTiled('fast', img, pair, undefined, 'auto', 0, () => {
          if (++n === 2) throw new Error('cancelled by the user');
        }),
      /tiled detection stopped: cancelled by the user/,
    );
    assert.equal(n, 2);
    assert.throws(() => model.detectTiled('batch', img, pair, undefined, 'auto', 0, undefined), /batch mode/);
    assert.throws(() => model.detectTiled('fast', img, pair, undefined, '0x2', 0, undefined), /at least 1/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('detectTiledAsync (no GPU attached: the CPU) equals detectTiled', async () => {
  const model = ClipModel.load('config.json', fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8'), new Uint8Array(fs.readFileSync(path.join(MODEL_DIR, 'model.safetensors'))));
  const pair = model.textPair('bottle', undefined, false);
  const img = Image.decode(new Uint8Array(fs.readFileSync(path.join(REPO, STRIP))));
  const sync = model.detectTiled('fast', img, pair, undefined, 'auto', 0, undefined);
  const calls = [];
  const r = await model.detectTiledAsync('fast', img, pair, undefined, 'auto', 0, (done, total) => calls.push([done, total]));
  assert.equal(r.score, sync.score);
  assert.equal(r.plan, sync.plan);
  assert.deepEqual(Array.from(r.map()), Array.from(sync.map()));
  assert.equal(calls.length, JSON.parse(r.plan).tiles.length + 1);
  await assert.rejects(model.detectTiledAsync('fast', img, pair, undefined, 'nope', 0, undefined), /ROWSxCOLS/);
  await assert.rejects(
    model.detectTiledAsync('fast', img, pair, undefined, 'auto', 0, () => {
      throw new Error('stop');
    }),
    /tiled detection stopped: stop/,
  );
});
