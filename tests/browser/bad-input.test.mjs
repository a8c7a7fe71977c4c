// Every bad input shows a clear message in the page, and the page keeps working: the next good
// image is scored.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createHash } from 'node:crypto';
import {
  ROOT,
  browser,
  cli,
  dropAndWait,
  dropFiles,
  image,
  loadTestModel,
  makeSite,
  pngHeaderOnly,
  message,
  openPage,
  ready,
  serve,
  waitLoaded,
} from './harness.mjs';

const sha = (b) => createHash('sha256').update(b).digest('hex');
const tiny = join(ROOT, 'tests', 'fixtures', 'hf_tiny');
const weights = readFileSync(join(tiny, 'model.safetensors'));
const config = readFileSync(join(tiny, 'config.json'));

// A manifest whose sources live on the test server: one complete download, one truncated
// file, one that fails (404). The page must check sizes and sha256 before loading anything.
const manifest = {
  schema: 1,
  models: [
    ['dl-ok', weights],
    ['dl-truncated', weights.subarray(0, weights.length >> 1)],
    ['dl-missing', null],
  ].map(([name]) => ({
    name,
    layout: 'hf',
    files: [
      { name: 'config.json', url: `__ORIGIN__/dl/${name}/config.json`, size: config.length, sha256: sha(config) },
      { name: 'model.safetensors', url: `__ORIGIN__/dl/${name}/model.safetensors`, size: weights.length, sha256: sha(weights) },
    ],
  })),
};

let server;
let b;
let page;
let problems;
let cspViolations;
let otherPrompts;

const good = () => ({ name: 'bottle_good_001.jpg', type: 'image/jpeg', bytes: image('bottle_good_001.jpg') });

/** Drops a bad file, expects `pattern` in the alert, then checks a good image still scores. */
async function rejectsThenRecovers(files, pattern) {
  await dropFiles(page, '#drop', files);
  await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 30_000 });
  const text = await message(page);
  assert.match(text, pattern);
  const d = await dropAndWait(page, [good()]);
  assert.ok(Number.isFinite(d.score), 'the page kept working');
  assert.equal(await message(page), '', 'the message is cleared by the next good input');
  return text;
}

before(async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'anoscope-prompts-'));
  cli('prompts', 'build', '--model', join(ROOT, 'tests', 'fixtures', 'openclip_tiny'), '--out', join(tmp, 'other.safetensors'));
  otherPrompts = readFileSync(join(tmp, 'other.safetensors'));
  rmSync(tmp, { recursive: true, force: true });
  // The site's own manifest is replaced by the test one (same-origin URLs are filled in below).
  const site = makeSite({
    'dl/dl-ok/config.json': config,
    'dl/dl-ok/model.safetensors': weights,
    'dl/dl-truncated/config.json': config,
    'dl/dl-truncated/model.safetensors': weights.subarray(0, weights.length >> 1),
    'dl/dl-missing/config.json': config,
  });
  server = await serve(site);
  const origin = server.url.replace(/\/$/, '');
  writeFileSync(join(site, 'weights', 'manifest.json'), JSON.stringify(manifest).replaceAll('__ORIGIN__', origin));
  b = await browser();
  ({ page, problems, cspViolations } = await openPage(b.context, server.url));
  await ready(page);
});

after(async () => {
  await b?.close();
  server?.stop();
});

test('without a model, dropping an image says how to get one', { timeout: 90_000 }, async () => {
  assert.match(await page.textContent('#model-status'), /No checkpoint is served with this site/);
  assert.match(await page.textContent('#model-status'), /\.\/build\.sh weights/);
  await dropFiles(page, '#drop', [good()]);
  await page.waitForFunction(() => !document.getElementById('message').hidden);
  assert.match(await message(page), /Load a model first/);
});

test('a failed download (404) is reported and nothing is loaded', { timeout: 90_000 }, async () => {
  await page.getByRole('button', { name: /^Download dl-missing/ }).click();
  await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 30_000 });
  assert.match(await message(page), /Could not load the model: download of dl-missing weights failed: HTTP 404/);
  assert.match(await page.textContent('#model-status'), /No model loaded/);
});

test('a truncated download fails its size/sha256 check and is not cached', { timeout: 90_000 }, async () => {
  await page.getByRole('button', { name: /^Download dl-truncated/ }).click();
  await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 30_000 });
  assert.match(await message(page), /incomplete or corrupt: sha256 [0-9a-f]{64} \(\d+ bytes\), expected [0-9a-f]{64}/);
  const cached = await page.evaluate(async () => (await caches.open('anoscope-weights-v1')).keys().then((k) => k.map((r) => r.url)));
  assert.ok(!cached.some((u) => u.includes('dl-truncated/model')), `truncated file cached: ${cached}`);
});

test('a complete download is verified, cached and loaded (progress in bytes)', { timeout: 90_000 }, async () => {
  const seen = [];
  await page.exposeFunction('__progress', (t) => seen.push(t));
  await page.evaluate(() => {
    const el = document.getElementById('progress-text');
    new MutationObserver(() => window.__progress(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.getByRole('button', { name: /^Download dl-ok/ }).click();
  // The copy in the cache is kept once the whole file is in and its sha256 checked.
  await waitLoaded(page, 'dl-ok', { complete: true });
  assert.ok(seen.some((t) => /dl-ok weights: [\d.]+ (B|kB|MB)( of [\d.]+ (kB|MB))?/.test(t)), `progress: ${seen}`);
  const cached = await page.evaluate(async () => (await caches.open('anoscope-weights-v1')).keys().then((k) => k.map((r) => r.url)));
  assert.ok(cached.some((u) => u.endsWith('/dl/dl-ok/model.safetensors')), `cached: ${cached}`);
});

test('the interface test model loads after the failures', { timeout: 90_000 }, async () => {
  await loadTestModel(page);
});

test('a non-image file named .png', { timeout: 90_000 }, async () => {
  await rejectsThenRecovers([{ name: 'notes.png', type: 'image/png', bytes: Buffer.from('this is text, not a picture\n') }], /notes\.png: .+/);
});

test('a 0-byte file', { timeout: 90_000 }, async () => {
  await rejectsThenRecovers([{ name: 'empty.jpg', type: 'image/jpeg', bytes: Buffer.alloc(0) }], /empty\.jpg: .+/);
});

test('a corrupt (truncated) image', { timeout: 90_000 }, async () => {
  const png = image('bottle_broken_large_000.png');
  await rejectsThenRecovers([{ name: 'cut.png', type: 'image/png', bytes: png.subarray(0, png.length >> 1) }], /cut\.png: .+/);
});

test('a bit-flipped image', { timeout: 90_000 }, async () => {
  const png = Buffer.from(image('bottle_broken_large_000.png'));
  for (let i = 100; i < png.length; i += 97) png[i] ^= 0x5a;
  await rejectsThenRecovers([{ name: 'flipped.png', type: 'image/png', bytes: png }], /flipped\.png: .+/);
});

test('an image over the pixel limit (9000 × 9000 header) is refused before decoding', { timeout: 90_000 }, async () => {
  const text = await rejectsThenRecovers([{ name: 'huge.png', type: 'image/png', bytes: pngHeaderOnly(9000, 9000) }], /huge\.png: .*(9000|81000000|limit)/i);
  assert.match(text, /limit|too large|exceeds/i);
});

test('a prompt file built for another model is refused with both sha256s', { timeout: 90_000 }, async () => {
  await dropFiles(page, '#drop', [{ name: 'other-prompts.safetensors', type: '', bytes: otherPrompts }]);
  await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 30_000 });
  const text = await message(page);
  assert.match(text, /Prompt file other-prompts\.safetensors: .*(another model|embed)/);
  const d = await dropAndWait(page, [good()]);
  assert.ok(Number.isFinite(d.score));
});

test('a checkpoint without its config, and a broken checkpoint, keep the loaded model', { timeout: 90_000 }, async () => {
  await dropFiles(page, '#drop', [{ name: 'model.safetensors', type: '', bytes: Buffer.from('not a checkpoint') }]);
  await page.waitForFunction(() => !document.getElementById('message').hidden);
  assert.match(await message(page), /needs two files/);
  await dropFiles(page, '#drop', [
    { name: 'config.json', type: 'application/json', bytes: config },
    { name: 'model.safetensors', type: '', bytes: weights.subarray(0, 1000) },
  ]);
  await page.waitForFunction(() => /Still using/.test(document.getElementById('model-status').textContent), null, { timeout: 30_000 });
  assert.match(await message(page), /Could not load the model: .+/);
  const d = await dropAndWait(page, [good()]);
  assert.ok(Number.isFinite(d.score));
});

test('no CSP violations or page errors along the way', { timeout: 90_000 }, async () => {
  assert.deepEqual(await cspViolations(), []);
  assert.deepEqual(problems, []);
});
