// The learned modes in <anomaly-detector> and the JS API (issue 17 §3): `mode="anomalyclip"` with
// the model's models.json entry's learned file, a checkpoint folder's learned.safetensors loaded
// when the mode is first used, `learned="…"` and `loadLearned()`; the element's and the API's
// scores and maps against the native CLI's `detect --mode anomalyclip|adaptclip` and the page's on
// a real photo; and the errors (no learned file, a file converted for another checkpoint, a file
// that is not one, the other mode's file), after which the model still scores.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readSafetensors, widened } from '../wasm/safetensors.mjs';
import { indexSite } from './site-index.mjs';
import { IMAGES, ROOT, browser, cli, dropAndWait, makeSite, openPage, ready, serve, waitLoaded } from './harness.mjs';

const FIXTURE = join(ROOT, 'tests/fixtures/anomalyclip_tiny'); // embed_dim 16
const DPAM = join(ROOT, 'tests/fixtures/anomalyclip_tiny'); // AdaptCLIP's fixture model too
const PHOTO = 'bottle_broken_large_000.png';
const SIZE = 42; // AnomalyCLIP's side for the tiny model (learned.json), not its own 28
const ADAPT_SIZE = 70;

let tmp;
let learned;
let adapt;
let otherLearned; // bytes: AnomalyCLIP's file as converted for another (32-wide) checkpoint
let server;
let b;
let page; // a plain page of the site that loads the element's module
let cliAnomaly; // {score, map} of the CLI on PHOTO
let cliAdapt;
const photoB64 = readFileSync(join(IMAGES, PHOTO)).toString('base64');

/** The CLI's detect on PHOTO: {score, map}. */
function cliDetect(mode, model, file, size) {
  const out = join(tmp, `cli-${mode}`);
  cli('detect', '--mode', mode, '--model', model, '--learned', file, '--size', String(size), '--backend', 'cpu', '--out', out, join(IMAGES, PHOTO));
  const stem = PHOTO.replace(/\.png$/, '');
  const json = JSON.parse(readFileSync(join(out, `${stem}.json`), 'utf8'));
  const map = readSafetensors(readFileSync(join(out, `${stem}.map.safetensors`))).get('anomaly_map');
  assert.equal(json.mode, mode);
  assert.deepEqual(map.shape, [size, size]);
  assert.ok(Math.max(...map.data) - Math.min(...map.data) > 1e-3, 'a real map, not a constant');
  return { score: json.score, map: map.data };
}

/** Largest |a − b| over two maps of the same length. */
function worst(a, b) {
  assert.equal(a.length, b.length);
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]));
  return w;
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'anoscope-learned-element-'));
  learned = join(tmp, 'learned.safetensors');
  cli('convert', '--learned', join(FIXTURE, 'learned.pth'), '--model', FIXTURE, '--out', learned);
  adapt = join(tmp, 'adaptclip.safetensors');
  cli('convert', '--learned', join(ROOT, 'tests/fixtures/adaptclip_tiny/learned.pth'), '--model', DPAM, '--out', adapt);
  // AnomalyCLIP's file as for a model with 32-wide embeddings (its text features zero-padded):
  // a file for another checkpoint (both learned fixtures share one 16-wide model).
  const learnedF32 = join(tmp, 'learned-f32.safetensors');
  cli('convert', '--learned', join(FIXTURE, 'learned.pth'), '--model', FIXTURE, '--dtype', 'f32', '--out', learnedF32);
  otherLearned = widened(readFileSync(learnedF32), ['text_features']);
  cliAnomaly = cliDetect('anomalyclip', FIXTURE, learned, SIZE);
  cliAdapt = cliDetect('adaptclip', DPAM, adapt, ADAPT_SIZE);
  const dir = makeSite({
    // A models.json entry with its learned file (and its size).
    'models/anomalyclip-tiny/open_clip_config.json': readFileSync(join(FIXTURE, 'open_clip_config.json')),
    'models/anomalyclip-tiny/open_clip_model.safetensors': readFileSync(join(FIXTURE, 'open_clip_model.safetensors')),
    'models/anomalyclip-tiny/learned.safetensors': readFileSync(learned),
    'models/anomalyclip-tiny/learned.json': JSON.stringify({ imageSize: SIZE }),
    // AdaptCLIP's model without a learned file; its file elsewhere.
    'models/dpam-tiny/open_clip_config.json': readFileSync(join(DPAM, 'open_clip_config.json')),
    'models/dpam-tiny/open_clip_model.safetensors': readFileSync(join(DPAM, 'open_clip_model.safetensors')),
    // A checkpoint folder outside models.json, with its learned file and size beside it.
    'ckpt/anomalyclip/open_clip_config.json': readFileSync(join(FIXTURE, 'open_clip_config.json')),
    'ckpt/anomalyclip/open_clip_model.safetensors': readFileSync(join(FIXTURE, 'open_clip_model.safetensors')),
    'ckpt/anomalyclip/learned.safetensors': readFileSync(learned),
    'ckpt/anomalyclip/learned.json': JSON.stringify({ imageSize: SIZE }),
    'learned/adaptclip.safetensors': readFileSync(adapt),
    'learned/anomalyclip.safetensors': readFileSync(learned),
    'learned/other-model.safetensors': otherLearned,
    'element.html':
      '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>element</title>' +
      '<script type="module" src="anomaly-detector.js"></script></head><body></body></html>',
  });
  await indexSite(dir);
  server = await serve(dir);
  b = await browser();
  ({ page } = await openPage(b.context, `${server.url}element.html`));
  await page.waitForFunction(() => customElements.get('anomaly-detector'));
  await page.evaluate(() => {
    window.__events = [];
    for (const type of ['anomaly-ready', 'anomaly-error', 'anomaly-score']) {
      document.addEventListener(type, (e) => window.__events.push({ type, id: e.target.id, detail: e.detail }));
    }
  });
});

after(async () => {
  await b?.close();
  server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Adds <anomaly-detector id=… …attrs> to the page. */
function addElement(id, attrs) {
  return page.evaluate(
    ({ id, attrs }) => {
      const el = document.createElement('anomaly-detector');
      el.id = id;
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      document.body.append(el);
    },
    { id, attrs },
  );
}

/** Sets (or, with null, removes) attributes of element `id`. */
function setAttrs(id, attrs) {
  return page.evaluate(
    ({ id, attrs }) => {
      const el = document.getElementById(id);
      for (const [k, v] of Object.entries(attrs)) (v === null ? el.removeAttribute(k) : el.setAttribute(k, v));
    },
    { id, attrs },
  );
}

/** element.detect(PHOTO): the detail (map as an array), or {error} with the anomaly-error it fired. */
function detectOn(id) {
  return page.evaluate(
    async ({ id, b64, name }) => {
      const el = document.getElementById(id);
      const file = new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: 'image/png' });
      const before = window.__events.length;
      try {
        const d = await el.detect(file);
        return { ...d, map: Array.from(d.map), status: el.shadowRoot.querySelector('[part=status]').textContent };
      } catch (e) {
        const fired = window.__events.slice(before).filter((x) => x.type === 'anomaly-error' && x.id === id);
        return { error: e.message, fired: fired.map((x) => x.detail.message), status: el.shadowRoot.querySelector('[part=status]').textContent };
      }
    },
    { id, b64: photoB64, name: PHOTO },
  );
}

test('<anomaly-detector model="anomalyclip-tiny" mode="anomalyclip">: the entry\'s learned file; the CLI\'s and the page\'s score and map', { timeout: 180_000 }, async () => {
  await addElement('ac', { model: 'anomalyclip-tiny', mode: 'anomalyclip' });
  const d = await detectOn('ac');
  assert.equal(d.error, undefined, d.error);
  const readyDetail = await page.evaluate(() => window.__events.find((e) => e.type === 'anomaly-ready' && e.id === 'ac').detail);
  assert.deepEqual(readyDetail.learned, { mode: 'anomalyclip', imageSize: SIZE }, 'loaded with the model, at the entry\'s size');
  assert.deepEqual([d.width, d.height], [SIZE, SIZE]);
  const w = worst(d.map, cliAnomaly.map);
  console.log(`element vs CLI (anomalyclip, ${SIZE} px): score ${d.score} vs ${cliAnomaly.score}, map max|Δ| = ${w.toExponential(2)}`);
  assert.ok(Math.abs(d.score - cliAnomaly.score) <= 1e-5, `score ${d.score} vs ${cliAnomaly.score}`);
  assert.ok(w <= 1e-5, `map max|Δ| = ${w}`);
  assert.match(d.status, new RegExp(`^Anomaly score ${d.score.toFixed(3)}: (anomalous|normal) at threshold 0.5`));
  assert.deepEqual([d.photoWidth, d.photoHeight], [128, 128]);

  // The page, on the same photo with the same entry: the same numbers.
  const { page: p } = await openPage(b.context, `${server.url}?model=anomalyclip-tiny`);
  try {
    await ready(p);
    await waitLoaded(p, 'anomalyclip-tiny');
    await p.selectOption('#mode', 'anomalyclip');
    const pd = await dropAndWait(p, [{ name: PHOTO, type: 'image/png', bytes: readFileSync(join(IMAGES, PHOTO)) }]);
    const wp = worst(d.map, pd.map);
    console.log(`element vs page: score ${d.score} vs ${pd.score}, map max|Δ| = ${wp.toExponential(2)}`);
    assert.ok(Math.abs(d.score - pd.score) <= 1e-5, `score ${d.score} vs page ${pd.score}`);
    assert.ok(wp <= 1e-5, `map max|Δ| = ${wp}`);
  } finally {
    await p.close();
  }
});

test('a checkpoint folder in fast mode, then mode="anomalyclip": its learned.safetensors (learned.json\'s size) loads on first use', { timeout: 180_000 }, async () => {
  await addElement('folder', { model: 'ckpt/anomalyclip/', mode: 'fast' });
  const fast = await detectOn('folder');
  assert.equal(fast.error, undefined, fast.error);
  assert.deepEqual([fast.width, fast.height], [28, 28], 'fast mode at the model\'s own size');
  const readyDetail = await page.evaluate(() => window.__events.find((e) => e.type === 'anomaly-ready' && e.id === 'folder').detail);
  assert.equal(readyDetail.learned, null, 'no learned file downloaded for fast mode');
  const learnedRequests = () => server.log.filter((l) => /ckpt\/anomalyclip\/learned\.(safetensors|json)/.test(l)).length;
  const before = learnedRequests();
  assert.equal(before, 0, 'nothing of the learned file fetched in fast mode');
  await setAttrs('folder', { mode: 'anomalyclip' });
  const d = await detectOn('folder');
  assert.equal(d.error, undefined, d.error);
  assert.equal(learnedRequests(), 2, 'learned.json and learned.safetensors fetched once, when the mode was first used');
  assert.deepEqual([d.width, d.height], [SIZE, SIZE]);
  assert.ok(Math.abs(d.score - cliAnomaly.score) <= 1e-5, `score ${d.score} vs ${cliAnomaly.score}`);
  assert.ok(worst(d.map, cliAnomaly.map) <= 1e-5);
  // Again: no second download.
  assert.equal((await detectOn('folder')).score, d.score);
  assert.equal(learnedRequests(), 2);
});

test('the JS API: loadLearned (AdaptCLIP) scores as the CLI; the other mode and a file for another checkpoint are refused, the model stays', { timeout: 180_000 }, async () => {
  const r = await page.evaluate(
    async ({ b64, name, size }) => {
      const { createDetector } = await import('./api.js');
      const blob = new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type: 'image/png' });
      const d = await createDetector({ model: 'models/dpam-tiny/' });
      const out = { loadedWith: d.model.learned };
      const err = async (fn) => {
        try {
          await fn();
          return null;
        } catch (e) {
          return e.message;
        }
      };
      out.none = await err(() => d.detect(blob, { mode: 'adaptclip' }));
      out.unknown = await err(() => d.detect(blob, { mode: 'patchcore' }));
      out.learned = await d.loadLearned('learned/adaptclip.safetensors', { imageSize: size });
      const a = await d.detect(blob, { mode: 'adaptclip' });
      out.adapt = { score: a.score, width: a.width, height: a.height, map: Array.from(a.map) };
      out.otherMode = await err(() => d.detect(blob, { mode: 'anomalyclip' }));
      // A file converted for another checkpoint: 32-wide text features; this model's embeddings are 16 wide.
      out.mismatch = await err(() => d.loadLearned('learned/other-model.safetensors'));
      out.missing = await err(() => d.loadLearned('learned/nothing-here.safetensors'));
      out.bytesNotLearned = await err(() => d.loadLearned(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9])));
      const again = await d.detect(blob, { mode: 'adaptclip' });
      out.againScore = again.score;
      out.fast = (await d.detect(blob, { mode: 'fast' })).score;
      d.close();
      return out;
    },
    { b64: photoB64, name: PHOTO, size: ADAPT_SIZE },
  );
  assert.equal(r.loadedWith, null);
  assert.match(r.none, /^mode “adaptclip” needs a learned file \(AdaptCLIP's learned adapters, as anoscope convert --learned FILE\.pth --model DIR writes it for this checkpoint\), and none is loaded for dpam-tiny/);
  assert.match(r.unknown, /^mode “patchcore” is not available here \(fast, winclip, anomalyclip, adaptclip\)$/);
  assert.deepEqual(r.learned, { mode: 'adaptclip', imageSize: ADAPT_SIZE });
  assert.deepEqual([r.adapt.width, r.adapt.height], [ADAPT_SIZE, ADAPT_SIZE]);
  const w = worst(r.adapt.map, cliAdapt.map);
  console.log(`API vs CLI (adaptclip, ${ADAPT_SIZE} px): score ${r.adapt.score} vs ${cliAdapt.score}, map max|Δ| = ${w.toExponential(2)}`);
  assert.ok(Math.abs(r.adapt.score - cliAdapt.score) <= 1e-5, `score ${r.adapt.score} vs ${cliAdapt.score}`);
  assert.ok(w <= 1e-5, `map max|Δ| = ${w}`);
  assert.match(r.otherMode, /^mode “anomalyclip” needs AnomalyCLIP's learned prompts, but the learned file loaded for dpam-tiny holds AdaptCLIP's learned adapters: use mode “adaptclip”/);
  assert.match(r.mismatch, /^could not load the learned file http:\/\/127\.0\.0\.1:\d+\/learned\/other-model\.safetensors for dpam-tiny: the learned prompts do not belong to this model: text embeddings have 32 dimensions, the model 16$/);
  assert.match(r.missing, /^could not load the learned file .*nothing-here\.safetensors for dpam-tiny: download of learned file nothing-here\.safetensors failed: HTTP 404/);
  assert.match(r.bytesNotLearned, /^could not load the learned file for dpam-tiny: the learned file: not a valid safetensors file/);
  // Nothing lost: the adapters loaded before still score, the same.
  assert.equal(r.againScore, r.adapt.score);
  assert.ok(Number.isFinite(r.fast));
});

test('element errors: a learned mode without a file, a file for another checkpoint, not a learned file, a bad size; the model stays', { timeout: 180_000 }, async () => {
  await addElement('bad', { model: 'test-tiny', mode: 'anomalyclip' });
  const none = await detectOn('bad');
  assert.match(none.error, /^mode “anomalyclip” needs a learned file \(AnomalyCLIP's learned prompts, .*none is loaded for interface test model/);
  assert.deepEqual(none.fired, [none.error], 'an anomaly-error with the same message');
  assert.equal(none.status, none.error, 'shown in the element');

  await setAttrs('bad', { learned: 'learned/anomalyclip.safetensors' });
  const mismatch = await detectOn('bad');
  assert.match(mismatch.error, /^could not load the learned file http:\/\/127\.0\.0\.1:\d+\/learned\/anomalyclip\.safetensors for interface test model .*: the learned prompts do not belong to this model: text embeddings have 16 dimensions, the model 48$/);
  assert.deepEqual(mismatch.fired, [mismatch.error]);

  await setAttrs('bad', { learned: 'examples/bottle.png' });
  const notLearned = await detectOn('bad');
  assert.match(notLearned.error, /^could not load the learned file .*examples\/bottle\.png .*: the learned file: not a valid safetensors file/);

  await setAttrs('bad', { learned: 'learned/anomalyclip.safetensors', 'learned-size': 'big' });
  const size = await detectOn('bad');
  assert.equal(size.error, 'learned-size must be a whole number of pixels from 1 to 4096, got “big”');

  // The model stayed loaded: fast mode scores.
  await setAttrs('bad', { mode: 'fast', 'learned-size': null });
  const fast = await detectOn('bad');
  assert.equal(fast.error, undefined, fast.error);
  assert.ok(Number.isFinite(fast.score));
  const readies = await page.evaluate(() => window.__events.filter((e) => e.type === 'anomaly-ready' && e.id === 'bad').length);
  assert.equal(readies, 1, 'the model was loaded once');
});
