// The learned modes in the page (issue 17): a served model entry with a learned file (AnomalyCLIP's
// prompts or AdaptCLIP's adapters, converted by `anoscope convert --learned FILE --model DIR` at
// test time from the tiny fixtures) offers the mode in the mode picker, says its size and speed
// before anything is downloaded, and scores a real photo exactly as the native CLI's `detect
// --mode anomalyclip|adaptclip`.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readSafetensors } from '../wasm/safetensors.mjs';
import { indexSite } from './site-index.mjs';
import { IMAGES, ROOT, browser, cli, dropAndWait, dropFiles, loadTestModel, makeSite, message, openPage, ready, serve, waitLoaded } from './harness.mjs';

const FIXTURE = join(ROOT, 'tests/fixtures/anomalyclip_tiny');
const DPAM = join(ROOT, 'tests/fixtures/anomalyclip_tiny'); // AdaptCLIP's fixture model too
const ADAPT_SIZE = 70; // the AdaptCLIP fixture's size (the model's own is 28)
const PHOTO = 'bottle_broken_large_000.png';
// The learned mode's side for the tiny model: 42 px (the official fixture's size), not its own 28,
// so the position embeddings are resampled as the official code does (the default is 518).
const SIZE = 42;

let tmp;
let learned; // the converted learned file
let adapt; // AdaptCLIP's
let server;
let b;
let page;
let native; // the CLI's result on PHOTO: {score, map}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'anoscope-learned-'));
  learned = join(tmp, 'learned.safetensors');
  cli('convert', '--learned', join(FIXTURE, 'learned.pth'), '--model', FIXTURE, '--out', learned);
  adapt = join(tmp, 'adaptclip.safetensors');
  cli('convert', '--learned', join(ROOT, 'tests/fixtures/adaptclip_tiny/learned.pth'), '--model', DPAM, '--out', adapt);
  const dir = makeSite({
    'models/anomalyclip-tiny/open_clip_config.json': readFileSync(join(FIXTURE, 'open_clip_config.json')),
    'models/anomalyclip-tiny/open_clip_model.safetensors': readFileSync(join(FIXTURE, 'open_clip_model.safetensors')),
    'models/anomalyclip-tiny/learned.safetensors': readFileSync(learned),
    'models/anomalyclip-tiny/learned.json': JSON.stringify({ imageSize: SIZE }),
    'models/adaptclip-tiny/open_clip_config.json': readFileSync(join(DPAM, 'open_clip_config.json')),
    'models/adaptclip-tiny/open_clip_model.safetensors': readFileSync(join(DPAM, 'open_clip_model.safetensors')),
    'models/adaptclip-tiny/learned.safetensors': readFileSync(adapt),
    'models/adaptclip-tiny/learned.json': JSON.stringify({ imageSize: ADAPT_SIZE }),
  });
  await indexSite(dir);
  server = await serve(dir);
  b = await browser();
  ({ page } = await openPage(b.context, `${server.url}?model=anomalyclip-tiny`));
  await ready(page);
  await waitLoaded(page, 'anomalyclip-tiny');
});

after(async () => {
  await b?.close();
  server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const modes = () => page.$$eval('#mode option', (os) => os.map((o) => o.value));

const STRIP = join(ROOT, 'tests/images/ksdd_defect_134.png'); // 250×627: tiled by auto at 42 and 70 px

/** Drops `path` and resolves with the drawn result, its photo-size map copied out (a plain array). */
function dropWithPhotoMap(p, path) {
  return p.evaluate(
    async ({ b64, name }) => {
      const drawn = new Promise((r) => document.addEventListener('anoscope:drawn', (e) => r(e.detail), { once: true }));
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type: 'image/png' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      const e = await drawn;
      const pm = e.photoMap;
      return { ...e, map: undefined, photoMap: { width: pm.width, height: pm.height, map: Array.from(pm.map) } };
    },
    { b64: readFileSync(path).toString('base64'), name: 'ksdd_defect_134.png' },
  );
}

/** Tiles auto on the strip in the page (the loaded model, `mode`) against the CLI's `detect
 * --tiles auto --full-map` with `args`: the same plan, the stitched map and score within 1e-5. */
async function tiledAgainstCli(mode, args, label) {
  await page.selectOption('#mode', mode);
  await page.selectOption('#tiles', 'auto');
  const out = join(tmp, `cli-tiles-${mode}`);
  try {
    const d = await dropWithPhotoMap(page, STRIP);
    cli('detect', '--mode', mode, ...args, '--backend', 'cpu', '--tiles', 'auto', '--full-map', '--out', out, STRIP);
    const native = JSON.parse(readFileSync(join(out, 'ksdd_defect_134.json'), 'utf8'));
    const full = readSafetensors(readFileSync(join(out, 'ksdd_defect_134.map.safetensors'))).get('anomaly_map_full');
    assert.equal(native.mode, mode);
    assert.deepEqual(full.shape, [627, 250]);
    assert.deepEqual([d.photoMap.width, d.photoMap.height], [250, 627]);
    assert.ok(native.tiles.tiles.length > 1, 'the CLI tiled the strip');
    assert.equal(d.tiles, native.tiles.tiles.length);
    assert.deepEqual(d.tileRects, native.tiles.tiles, 'the same tile plan');
    let worst = 0;
    for (let i = 0; i < full.data.length; i++) worst = Math.max(worst, Math.abs(d.photoMap.map[i] - full.data[i]));
    console.log(`page vs CLI (${label}, tiles auto, ${d.tiles} tiles): stitched map max|Δ| = ${worst.toExponential(2)}, score ${d.score} vs ${native.score}`);
    assert.ok(worst <= 1e-5, `stitched map max|Δ| = ${worst}`);
    assert.ok(Math.abs(d.score - native.score) <= 1e-5, `score ${d.score} vs ${native.score}`);
    // A real map (not a constant), and the tiled score is not the whole-photo one.
    let [lo, hi] = [Infinity, -Infinity];
    for (const v of full.data) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
    assert.ok(hi - lo > 1e-3, `map range ${lo}..${hi}`);
    assert.notEqual(native.score, native.tiles.whole_score);
    assert.match(await page.textContent('#photo-note'), new RegExp(`Tiled inspection: ${d.tiles} tiles`));
  } finally {
    await page.selectOption('#tiles', 'off');
  }
}

test('models.json carries the learned file; the page says its size and speed before downloading', async () => {
  const served = await page.evaluate(async () => (await (await fetch('models.json')).json()).models);
  const m = served.find((s) => s.name === 'anomalyclip-tiny');
  assert.ok(m, 'the entry is listed');
  assert.equal(m.learned.mode, 'anomalyclip');
  assert.equal(m.learned.imageSize, SIZE);
  assert.equal(m.learned.size, readFileSync(learned).length);
  assert.match(m.learned.sha256, /^[0-9a-f]{64}$/);
  const text = await page.textContent('#model-sources');
  assert.match(text, new RegExp(String.raw`Load anomalyclip-tiny \(served with this site; with AnomalyCLIP \(learned prompts, [0-9.]+ [kKM]?i?B\) at ${SIZE} px: slow on the CPU, fast with WebGPU\)`));
});

test('the mode picker offers AnomalyCLIP for the entry with a learned file, and only for it', { timeout: 120_000 }, async () => {
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'anomalyclip']);
  assert.match(await page.textContent('#model-status'), new RegExp(String.raw`^Loaded anomalyclip-tiny \(input 28 px.*, AnomalyCLIP at ${SIZE} px\)`));
  await page.selectOption('#mode', 'anomalyclip');
  const note = await page.textContent('#mode-note');
  assert.match(note, new RegExp(`AnomalyCLIP .* resized to ${SIZE} px: slow on the CPU .* fast with WebGPU`));
  // Another model (no learned file): the option goes, the mode falls back to fast.
  await loadTestModel(page);
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch']);
  assert.equal(await page.inputValue('#mode'), 'fast');
  await page.getByRole('button', { name: /^Load anomalyclip-tiny/ }).click();
  await waitLoaded(page, 'anomalyclip-tiny');
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'anomalyclip']);
});

test("a real photo: the page's score and maps equal the CLI's detect --mode anomalyclip", { timeout: 120_000 }, async () => {
  await page.selectOption('#mode', 'anomalyclip');
  await page.selectOption('#tiles', 'off'); // the untiled pass (tiles: the next test)
  const bytes = readFileSync(join(IMAGES, PHOTO));
  const d = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes }]);
  const out = join(tmp, 'cli');
  cli(
    'detect',
    '--mode', 'anomalyclip',
    '--model', FIXTURE,
    '--learned', learned,
    '--size', String(SIZE),
    '--backend', 'cpu',
    '--full-map',
    '--out', out,
    join(IMAGES, PHOTO),
  );
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const maps = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`)));
  assert.equal(json.mode, 'anomalyclip');
  assert.equal(d.tiles, 0, 'tiles off: one pass');
  const map = maps.get('anomaly_map');
  native = { score: json.score, map: map.data };
  assert.deepEqual(map.shape, [SIZE, SIZE]);
  assert.equal(d.map.length, SIZE * SIZE);
  let worst = 0;
  for (let i = 0; i < map.data.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - map.data[i]));
  const full = maps.get('anomaly_map_full');
  const status = await page.textContent('#image-status');
  console.log(`page vs CLI (anomalyclip, ${SIZE} px): score ${d.score} vs ${json.score}, map max|Δ| = ${worst.toExponential(2)}; ${status}`);
  assert.ok(Math.abs(d.score - json.score) <= 1e-5, `score ${d.score} vs ${json.score}`);
  assert.ok(worst <= 1e-5, `map max|Δ| = ${worst}`);
  // The map differs from place to place (a real map, not a constant).
  assert.ok(Math.max(...map.data) - Math.min(...map.data) > 1e-3);
  assert.ok(full, 'the CLI wrote the photo-size map');
  assert.match(status, /Scored 1 of 1 image \(anomalyclip\)/);
});

test("AnomalyCLIP tiled: the page's stitched map equals the CLI's detect --tiles auto --full-map", { timeout: 180_000 }, async () => {
  await tiledAgainstCli('anomalyclip', ['--model', FIXTURE, '--learned', learned, '--size', String(SIZE)], `anomalyclip, ${SIZE} px`);
});

test('on WebGPU (?backend=gpu) the page scores the same photo as the CLI', { timeout: 180_000 }, async (t) => {
  assert.ok(native, 'the CPU test ran first');
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-tiny&backend=gpu`);
  await ready(p);
  await waitLoaded(p, 'anomalyclip-tiny');
  if ((await p.getAttribute('#backend', 'data-gpu')) !== 'true') {
    const why = await p.textContent('#backend');
    await p.close();
    if (process.env.ANOSCOPE_REQUIRE_WEBGPU === '1') assert.fail(`no WebGPU: ${why}`);
    return t.skip(`Chromium offers no WebGPU adapter here (${why})`);
  }
  await p.selectOption('#mode', 'anomalyclip');
  const d = await dropAndWait(p, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  let worst = 0;
  for (let i = 0; i < native.map.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - native.map[i]));
  const backend = await p.textContent('#backend');
  console.log(`page on WebGPU vs CLI (anomalyclip, ${SIZE} px): score ${d.score} vs ${native.score}, map max|Δ| = ${worst.toExponential(2)}; ${backend}`);
  assert.equal(await p.getAttribute('#backend', 'data-gpu'), 'true', `still on the GPU: ${backend}`);
  // As the other modes on WebGPU (webgpu.test.mjs): within 1e-3 of the CPU.
  assert.ok(Math.abs(d.score - native.score) <= 1e-3, `score ${d.score} vs ${native.score}`);
  assert.ok(worst <= 1e-3, `map max|Δ| = ${worst}`);
  await p.close();
});

test('cancel stops an AnomalyCLIP run as in the other modes', { timeout: 120_000 }, async () => {
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-tiny&stepdelay=1500`);
  await ready(p);
  await waitLoaded(p, 'anomalyclip-tiny');
  await p.selectOption('#mode', 'anomalyclip');
  await dropFiles(p, '#drop', [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  await p.waitForSelector('#cancel:not([hidden])');
  await p.click('#cancel');
  await p.waitForFunction(() => /^Stopped \(cancelled\)/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  assert.equal(await p.textContent('#image-status'), 'Stopped (cancelled): scored 0 of 1 image (anomalyclip). Drop the rest again to score them.');
  assert.equal(await p.textContent('#verdict'), 'No image scored yet.');
  await p.close();
});

test('cancel stops one AnomalyCLIP image in the middle of its image pass (the stop check after each block)', { timeout: 120_000 }, async () => {
  // ?blockdelay=400: each of the tiny model's 24 blocks takes 400 ms more, so the one pass takes
  // over 9.6 s; the cancel must land within a block or two, not at the end of the image.
  const BLOCK_MS = 400;
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-tiny&blockdelay=${BLOCK_MS}`);
  await ready(p);
  await waitLoaded(p, 'anomalyclip-tiny');
  await p.selectOption('#mode', 'anomalyclip');
  await p.selectOption('#tiles', 'off');
  assert.equal(await p.evaluate(() => crossOriginIsolated), true, 'the stop check reads the shared cancel flag');
  await dropFiles(p, '#drop', [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  await p.waitForSelector('#cancel:not([hidden])');
  await p.waitForTimeout(1000); // well inside the image pass
  const t0 = Date.now();
  await p.click('#cancel');
  await p.waitForFunction(() => /^Stopped \(cancelled\)/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  const waited = Date.now() - t0;
  console.log(`cancel 1 s into a ${24 * BLOCK_MS} ms+ image pass stopped it after ${waited} ms`);
  assert.ok(waited < 6 * BLOCK_MS, `the cancel waited ${waited} ms: more than a few blocks`);
  assert.equal(await p.textContent('#image-status'), 'Stopped (cancelled): scored 0 of 1 image (anomalyclip). Drop the rest again to score them.');
  assert.equal(await p.textContent('#verdict'), 'No image scored yet.');
  await p.close();
});

test("AdaptCLIP (zero-shot): the page's score and map equal the CLI's detect --mode adaptclip", { timeout: 120_000 }, async () => {
  const served = await page.evaluate(async () => (await (await fetch('models.json')).json()).models);
  const l = served.find((s) => s.name === 'adaptclip-tiny').learned;
  assert.equal(l.mode, 'adaptclip', 'told from the file (its class pairs)');
  assert.equal(l.imageSize, ADAPT_SIZE);
  assert.equal(l.size, readFileSync(adapt).length);
  assert.match(await page.textContent('#model-sources'), new RegExp(`Load adaptclip-tiny \\(served with this site; with AdaptCLIP \\(learned adapters, zero-shot or few-shot, [^)]*\\) at ${ADAPT_SIZE} px: slow on the CPU, fast with WebGPU\\)`));
  await page.getByRole('button', { name: /^Load adaptclip-tiny/ }).click();
  await waitLoaded(page, 'adaptclip-tiny');
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'adaptclip']);
  await page.selectOption('#mode', 'adaptclip');
  const d = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  const out = join(tmp, 'cli-adapt');
  cli('detect', '--mode', 'adaptclip', '--model', DPAM, '--learned', adapt, '--size', String(ADAPT_SIZE), '--backend', 'cpu', '--out', out, join(IMAGES, PHOTO));
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const map = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`))).get('anomaly_map');
  assert.equal(json.mode, 'adaptclip');
  assert.deepEqual(map.shape, [ADAPT_SIZE, ADAPT_SIZE]);
  assert.equal(d.map.length, ADAPT_SIZE * ADAPT_SIZE);
  let worst = 0;
  for (let i = 0; i < map.data.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - map.data[i]));
  console.log(`page vs CLI (adaptclip zero-shot, ${ADAPT_SIZE} px): score ${d.score} vs ${json.score}, map max|Δ| = ${worst.toExponential(2)}`);
  assert.ok(Math.abs(d.score - json.score) <= 1e-5, `score ${d.score} vs ${json.score}`);
  assert.ok(worst <= 1e-5, `map max|Δ| = ${worst}`);
  assert.ok(Math.max(...map.data) - Math.min(...map.data) > 1e-3);
  assert.match(await page.textContent('#image-status'), /Scored 1 of 1 image \(adaptclip\)/);
});

test("AdaptCLIP tiled (zero-shot): the page's stitched map equals the CLI's detect --tiles auto --full-map", { timeout: 180_000 }, async () => {
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'adaptclip'], 'the AdaptCLIP model is loaded');
  await tiledAgainstCli('adaptclip', ['--model', DPAM, '--learned', adapt, '--size', String(ADAPT_SIZE)], `adaptclip, ${ADAPT_SIZE} px`);
});

test("AdaptCLIP few-shot: references in the tray; the page's score and map equal the CLI's detect --refs", { timeout: 180_000 }, async () => {
  const REF = 'bottle_train_good_000.jpg';
  await page.selectOption('#mode', 'adaptclip');
  await page.selectOption('#tiles', 'off');
  assert.equal(await page.isVisible('#refs-box'), true, 'the reference tray is offered in the adaptclip mode');
  assert.match(await page.textContent('#mode-note'), /Normal reference images in the tray below make it few-shot/);
  // Zero-shot first (no references), then one reference: the result changes.
  const zero = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  await dropFiles(page, '#refs-drop', [{ name: REF, type: 'image/jpeg', bytes: readFileSync(join(IMAGES, REF)) }]);
  await page.waitForFunction(() => /1 normal reference image\(s\) embedded/.test(document.getElementById('refs-status').textContent));
  const d = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  const out = join(tmp, 'cli-adapt-few');
  cli('detect', '--mode', 'adaptclip', '--refs', join(IMAGES, REF), '--model', DPAM, '--learned', adapt, '--size', String(ADAPT_SIZE), '--backend', 'cpu', '--out', out, join(IMAGES, PHOTO));
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const map = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`))).get('anomaly_map');
  assert.equal(d.map.length, ADAPT_SIZE * ADAPT_SIZE);
  let worst = 0;
  for (let i = 0; i < map.data.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - map.data[i]));
  console.log(`page vs CLI (adaptclip 1-shot, ${ADAPT_SIZE} px): score ${d.score} vs ${json.score}, map max|Δ| = ${worst.toExponential(2)}; zero-shot ${zero.score}`);
  assert.ok(Math.abs(d.score - json.score) <= 1e-5, `score ${d.score} vs ${json.score}`);
  assert.ok(worst <= 1e-5, `map max|Δ| = ${worst}`);
  assert.notEqual(d.score, zero.score, 'the references are used');
  // Few-shot WinCLIP+ on the same tray still works (the references are embedded for it anew).
  await page.selectOption('#mode', 'fewshot');
  const w = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  assert.ok(Number.isFinite(w.score));
  assert.equal(await message(page), '');
  // Back to AdaptCLIP: the same few-shot result again.
  await page.selectOption('#mode', 'adaptclip');
  const again = await dropAndWait(page, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
  assert.equal(again.score, d.score);
});
