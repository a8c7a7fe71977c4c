// A learned file dropped or picked on the page (issue 17 §3): dropped next to a loaded model (with
// its learned.json for the input size), a converted AnomalyCLIP file, or the official .pth (its
// text features computed in the page with the text tower), adds "AnomalyCLIP" to the mode picker
// and scores a real photo as the CLI's `detect --mode anomalyclip`; a file that does not belong
// to the loaded checkpoint (AdaptCLIP's for another model, converted or .pth; AnomalyCLIP's
// 16-wide text features or context on a model 48 or 32 wide) is refused with the reason, and the
// model, its learned mode and the results stay.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readSafetensors, widened } from '../wasm/safetensors.mjs';
import { indexSite } from './site-index.mjs';
import { IMAGES, ROOT, browser, cli, dropAndWait, dropFiles, loadTestModel, makeSite, message, openPage, ready, serve, waitLoaded } from './harness.mjs';

const FIXTURE = join(ROOT, 'tests/fixtures/anomalyclip_tiny'); // embed_dim 16
const DPAM = join(ROOT, 'tests/fixtures/anomalyclip_tiny'); // AdaptCLIP's fixture model too
const PHOTO = 'bottle_broken_large_000.png';
const SIZE = 42;

let tmp;
let learned;
let adapt;
let otherAdapt; // bytes: AdaptCLIP's conversion as for another (32-wide) checkpoint
let server;
let b;
let page;
const photo = () => [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }];
const modes = () => page.$$eval('#mode option', (os) => os.map((o) => o.value));
const modelStatus = () => page.textContent('#model-status');

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'anoscope-learned-drop-'));
  learned = join(tmp, 'learned.safetensors');
  cli('convert', '--learned', join(FIXTURE, 'learned.pth'), '--model', FIXTURE, '--out', learned);
  adapt = join(tmp, 'adaptclip.safetensors');
  cli('convert', '--learned', join(ROOT, 'tests/fixtures/adaptclip_tiny/learned.pth'), '--model', DPAM, '--dtype', 'f32', '--out', adapt);
  // AdaptCLIP's conversion as for a model with 32-wide embeddings (its class pairs zero-padded):
  // a file for another checkpoint (both learned fixtures share one 16-wide model).
  otherAdapt = widened(readFileSync(adapt), ['adaptclip.learned_text', 'adaptclip.static_text']);
  // The checkpoint alone: the learned file comes from the reader's disk.
  const dir = makeSite({
    'models/anomalyclip-plain/open_clip_config.json': readFileSync(join(FIXTURE, 'open_clip_config.json')),
    'models/anomalyclip-plain/open_clip_model.safetensors': readFileSync(join(FIXTURE, 'open_clip_model.safetensors')),
  });
  await indexSite(dir);
  server = await serve(dir);
  b = await browser();
  ({ page } = await openPage(b.context, `${server.url}?model=anomalyclip-plain`));
  await ready(page);
  await waitLoaded(page, 'anomalyclip-plain');
});

after(async () => {
  await b?.close();
  server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Waits until the page shows an alert; returns its text. */
async function nextMessage() {
  await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 60_000 });
  return message(page);
}

let learnedScore; // the AnomalyCLIP score of PHOTO on the page

test('a dropped learned.safetensors (+ learned.json) adds AnomalyCLIP and scores as the CLI', { timeout: 180_000 }, async () => {
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch'], 'no learned mode before');
  const fast = await dropAndWait(page, photo());
  const verdict = await page.textContent('#verdict');
  await dropFiles(page, '#drop', [
    { name: 'learned.safetensors', type: '', bytes: readFileSync(learned) },
    { name: 'learned.json', type: 'application/json', bytes: Buffer.from(JSON.stringify({ imageSize: SIZE })) },
  ]);
  await page.waitForFunction(() => /from learned\.safetensors/.test(document.getElementById('model-status').textContent), null, { timeout: 60_000 });
  assert.match(await modelStatus(), new RegExp(`^Loaded anomalyclip-plain \\(input 28 px.*, AnomalyCLIP at ${SIZE} px from learned\\.safetensors\\)`));
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'anomalyclip']);
  assert.equal(await page.inputValue('#mode'), 'anomalyclip', 'the new mode is picked');
  assert.equal(await page.textContent('#verdict'), verdict, 'the result shown stays');
  assert.equal(await message(page), '');

  const d = await dropAndWait(page, photo());
  assert.notEqual(d.score, fast.score);
  const out = join(tmp, 'cli');
  cli('detect', '--mode', 'anomalyclip', '--model', FIXTURE, '--learned', learned, '--size', String(SIZE), '--backend', 'cpu', '--out', out, join(IMAGES, PHOTO));
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const map = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`))).get('anomaly_map');
  assert.equal(d.map.length, SIZE * SIZE);
  let worst = 0;
  for (let i = 0; i < map.data.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - map.data[i]));
  console.log(`page (dropped learned file) vs CLI: score ${d.score} vs ${json.score}, map max|Δ| = ${worst.toExponential(2)}`);
  assert.ok(Math.abs(d.score - json.score) <= 1e-5, `score ${d.score} vs ${json.score}`);
  assert.ok(worst <= 1e-5, `map max|Δ| = ${worst}`);
  assert.ok(Math.max(...map.data) - Math.min(...map.data) > 1e-3);
  assert.match(await page.textContent('#image-status'), /Scored 1 of 1 image \(anomalyclip\)/);
  learnedScore = d.score;
});

test('a learned file for another checkpoint is refused; model, mode and results stay', { timeout: 180_000 }, async () => {
  assert.ok(learnedScore !== undefined, 'the drop test ran first');
  const status = await modelStatus();
  const verdict = await page.textContent('#verdict');
  // AdaptCLIP's adapters as converted for a checkpoint with 32-wide embeddings.
  await dropFiles(page, '#drop', [{ name: 'adaptclip.safetensors', type: '', bytes: otherAdapt }]);
  const m = await nextMessage();
  assert.match(m, /^Learned file adaptclip\.safetensors \(nothing was changed\): the learned file: not AdaptCLIP parameters for this model: `adaptclip\.static_text` has shape \[2, 32\], expected \[2, 16\]/);
  assert.equal(await modelStatus(), status);
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch', 'anomalyclip']);
  assert.equal(await page.inputValue('#mode'), 'anomalyclip');
  assert.equal(await page.textContent('#verdict'), verdict);

  // (An official .pth for another checkpoint: the last test, on the interface test model, and
  // tests/wasm/learned.test.mjs; both learned fixtures share one model.)

  // A bad learned.json: refused before anything is read.
  await dropFiles(page, '#drop', [
    { name: 'learned.safetensors', type: '', bytes: readFileSync(learned) },
    { name: 'learned.json', type: 'application/json', bytes: Buffer.from('{"imageSize": 0}') },
  ]);
  await page.waitForFunction(() => /must be \{"imageSize": N\}/.test(document.getElementById('message').textContent), null, { timeout: 60_000 });

  // Nothing was lost: the same photo scores the same in the learned mode.
  const d = await dropAndWait(page, photo());
  assert.equal(d.score, learnedScore);
  assert.equal(await modelStatus(), status);
});

test("the official AnomalyCLIP .pth dropped: read in the page, scores as the CLI's --learned learned.pth", { timeout: 180_000 }, async () => {
  await dropFiles(page, '#drop', [
    { name: 'learned.pth', type: '', bytes: readFileSync(join(FIXTURE, 'learned.pth')) },
    { name: 'learned.json', type: 'application/json', bytes: Buffer.from(JSON.stringify({ imageSize: SIZE })) },
  ]);
  await page.waitForFunction(() => /from learned\.pth/.test(document.getElementById('model-status').textContent), null, { timeout: 60_000 });
  assert.equal(await message(page), '');
  assert.equal(await page.inputValue('#mode'), 'anomalyclip');
  const d = await dropAndWait(page, photo());
  const out = join(tmp, 'cli-pth');
  cli('detect', '--mode', 'anomalyclip', '--model', FIXTURE, '--learned', join(FIXTURE, 'learned.pth'), '--size', String(SIZE), '--backend', 'cpu', '--out', out, join(IMAGES, PHOTO));
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const map = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`))).get('anomaly_map');
  let worst = 0;
  for (let i = 0; i < map.data.length; i++) worst = Math.max(worst, Math.abs(d.map[i] - map.data[i]));
  console.log(`page (dropped .pth) vs CLI (.pth): score ${d.score} vs ${json.score}, map max|Δ| = ${worst.toExponential(2)}`);
  assert.ok(Math.abs(d.score - json.score) <= 1e-5, `score ${d.score} vs ${json.score}`);
  assert.ok(worst <= 1e-5, `map max|Δ| = ${worst}`);
  // Its conversion stores the text features as f16 (anoscope convert's default): close, not equal.
  assert.ok(Math.abs(d.score - learnedScore) <= 1e-3, `${d.score} vs the conversion's ${learnedScore}`);
  assert.notEqual(d.score, learnedScore, 'the .pth itself was read (f32 text features), not the earlier conversion');
});

test('picked on the interface test model (48-wide embeddings): AnomalyCLIP\'s 16-wide text features are refused', { timeout: 180_000 }, async () => {
  await loadTestModel(page);
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch'], 'the dropped file went with the old model');
  const d = await dropAndWait(page, photo());
  const status = await modelStatus();
  await page.setInputFiles('#learned-file', learned);
  const m = await nextMessage();
  assert.match(m, /^Learned file learned\.safetensors \(nothing was changed\): the learned prompts do not belong to this model: text embeddings have 16 dimensions, the model 48$/);
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch']);
  // The official .pth: its deep prompts need 9 text blocks, this model's text tower has 2
  // (loaded for it first: this model came with a prompt file and without its text tower).
  await page.evaluate(() => (document.getElementById('message').hidden = true));
  await page.setInputFiles('#learned-file', join(FIXTURE, 'learned.pth'));
  assert.match(await nextMessage(), /^Learned file learned\.pth \(nothing was changed\): the learned prompts have deep prompts for text blocks 1 to 8, the model's text tower has 2 blocks$/);
  assert.deepEqual(await modes(), ['fast', 'winclip', 'fewshot', 'batch']);
  assert.equal(await modelStatus(), status);
  const again = await dropAndWait(page, photo());
  assert.equal(again.score, d.score, 'the model still scores as before');
});

test('on WebGPU (?backend=gpu): a learned file dropped after the GPU took the image tower re-uploads it and scores as the CLI', { timeout: 180_000 }, async (t) => {
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-plain&backend=gpu`);
  try {
    await ready(p);
    await waitLoaded(p, 'anomalyclip-plain');
    if ((await p.getAttribute('#backend', 'data-gpu')) !== 'true') {
      const why = await p.textContent('#backend');
      if (process.env.ANOSCOPE_REQUIRE_WEBGPU === '1') assert.fail(`no WebGPU: ${why}`);
      return t.skip(`Chromium offers no WebGPU adapter here (${why})`);
    }
    await dropFiles(p, '#drop', [
      { name: 'learned.safetensors', type: '', bytes: readFileSync(learned) },
      { name: 'learned.json', type: 'application/json', bytes: Buffer.from(JSON.stringify({ imageSize: SIZE })) },
    ]);
    await p.waitForFunction(() => /from learned\.safetensors/.test(document.getElementById('model-status').textContent), null, { timeout: 60_000 });
    const d = await dropAndWait(p, photo());
    const backend = await p.textContent('#backend');
    console.log(`page on WebGPU (learned file dropped after load) vs the CPU page: score ${d.score} vs ${learnedScore}; ${backend}`);
    assert.equal(await p.getAttribute('#backend', 'data-gpu'), 'true', `still on the GPU: ${backend}`);
    // As learned.test.mjs on WebGPU: within 1e-3 of the CPU (the CPU page equals the CLI to 1e-5).
    assert.ok(Math.abs(d.score - learnedScore) <= 1e-3, `score ${d.score} vs ${learnedScore}`);
    assert.equal(d.map.length, SIZE * SIZE);
  } finally {
    await p.close();
  }
});

test('out of memory: the restarted detector loads the dropped learned file again; its mode stays picked and scores the same', { timeout: 180_000 }, async () => {
  // ?memcap=40 leaves 40 MB of wasm memory: a 4000 × 4000 photo cannot be decoded.
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-plain&memcap=40`);
  try {
    await ready(p);
    await waitLoaded(p, 'anomalyclip-plain');
    await dropFiles(p, '#drop', [
      { name: 'learned.safetensors', type: '', bytes: readFileSync(learned) },
      { name: 'learned.json', type: 'application/json', bytes: Buffer.from(JSON.stringify({ imageSize: SIZE })) },
    ]);
    await p.waitForFunction(() => /from learned\.safetensors/.test(document.getElementById('model-status').textContent), null, { timeout: 60_000 });
    const before = await dropAndWait(p, photo());
    assert.ok(Math.abs(before.score - learnedScore) <= 1e-6);
    await p.evaluate(async (b64) => {
      const src = await createImageBitmap(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]));
      const c = new OffscreenCanvas(4000, 4000);
      c.getContext('2d').drawImage(src, 0, 0, 4000, 4000);
      const dt = new DataTransfer();
      dt.items.add(new File([await c.convertToBlob({ type: 'image/png' })], 'large.png', { type: 'image/png' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, readFileSync(join(IMAGES, PHOTO)).toString('base64'));
    await p.waitForSelector('body[data-restarted="2"]', { timeout: 90_000 });
    await p.waitForFunction(() => /The detector was restarted/.test(document.getElementById('message').textContent));
    const m = await p.textContent('#message');
    assert.match(m, /^Out of memory: this image .* The detector was restarted: anomalyclip-plain is loaded again, its learned file learned\.safetensors too\. /);
    assert.equal(await p.inputValue('#mode'), 'anomalyclip', 'the learned mode stays picked');
    assert.deepEqual(await p.$$eval('#mode option', (os) => os.map((o) => o.value)), ['fast', 'winclip', 'fewshot', 'batch', 'anomalyclip']);
    assert.match(await p.textContent('#model-status'), new RegExp(`AnomalyCLIP at ${SIZE} px from learned\\.safetensors`));
    const after = await dropAndWait(p, photo());
    assert.equal(after.score, before.score);
  } finally {
    await p.close();
  }
});
