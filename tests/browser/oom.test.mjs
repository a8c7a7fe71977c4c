// Out of memory (issue 20 §5), for real: ?memcap=MB (a test hook) makes the worker grow its
// WebAssembly memory right after start so that only MB megabytes remain below the module's
// maximum; a batch of large photos then fails a genuine allocation inside the wasm module (the
// instance traps). The page must say what to do, restart the worker, load the same model again,
// keep its settings and every result already scored (visible and exportable), and score again.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, browser, dropAndWait, dropFiles, image, loadTestModel, makeSite, message, openPage, ready, serve } from './harness.mjs';

const MEMCAP_MB = 40;
const OOM = "needs more than the browser's WebAssembly memory (4 GiB). Score fewer images at once, use smaller tiles, or load the f16 checkpoint.";
const MODEL = 'interface test model (random weights, meaningless scores)';

let server;
let b;
let page;
let problems;

const photo = (name) => ({ name, type: name.endsWith('.png') ? 'image/png' : 'image/jpeg', bytes: image(name) });
const gridScores = () => page.$$eval('#grid li button', (bs) => bs.map((x) => ({ name: x.textContent.split(':')[0], score: Number(x.dataset.score) })));

async function exportJson() {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  return JSON.parse(readFileSync(await dl.path(), 'utf8'));
}

/** Drops the test photos scaled up to side × side PNGs (made in the page: decoding each takes
 * side² × 3 bytes of wasm memory and more). */
async function dropLargePhotos(names, side) {
  const payload = names.map((n) => ({ name: n, b64: image(n).toString('base64') }));
  await page.evaluate(
    async ({ payload, side }) => {
      const dt = new DataTransfer();
      for (const { name, b64 } of payload) {
        const src = await createImageBitmap(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]));
        const c = new OffscreenCanvas(side, side);
        c.getContext('2d').drawImage(src, 0, 0, side, side);
        const png = await c.convertToBlob({ type: 'image/png' });
        dt.items.add(new File([png], `large_${name.replace(/\.\w+$/, '')}.png`, { type: 'image/png' }));
      }
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    },
    { payload, side },
  );
}

before(async () => {
  server = await serve(makeSite());
  b = await browser();
  // Records the BroadcastChannels the page opens (the pool threads' report channel).
  await b.context.addInitScript(() => {
    const Native = globalThis.BroadcastChannel;
    globalThis.__channels = [];
    globalThis.BroadcastChannel = class extends Native {
      constructor(name) {
        super(name);
        globalThis.__channels.push(name);
      }
    };
  });
  ({ page, problems } = await openPage(b.context, `${server.url}?memcap=${MEMCAP_MB}`));
  await ready(page);
  await loadTestModel(page);
});

after(async () => {
  await b?.close();
  server?.stop();
});

test('a batch past the memory limit: clear message, new worker, same model, settings and results kept', { timeout: 150_000 }, async () => {
  // Results and settings the person has before the failure: a few-shot reference, three scored
  // photos in the grid, a threshold of their own.
  await page.selectOption('#mode', 'fewshot');
  await dropFiles(page, '#refs-drop', [photo('bottle_train_good_000.jpg')]);
  await page.waitForFunction(() => /1 normal reference image\(s\) embedded/.test(document.getElementById('refs-status').textContent));
  const fewshot = await dropAndWait(page, [photo('bottle_good_000.jpg')]);
  await page.selectOption('#mode', 'fast');
  const three = ['bottle_good_000.jpg', 'bottle_broken_large_001.jpg', 'bottle_contamination_000.jpg'];
  await dropFiles(page, '#drop', three.map(photo));
  await page.waitForFunction(() => document.getElementById('image-status').textContent === 'Scored 3 of 3 images (fast).', null, { timeout: 60_000 });
  await page.waitForFunction(() => document.querySelectorAll('#grid li').length === 3);
  const kept = await gridScores();
  await page.fill('#threshold', '0.3');
  await page.dispatchEvent('#threshold', 'input');
  assert.equal(await page.getAttribute('body', 'data-worker-gen'), null);

  // The batch: eight photos at 1500 × 1500 cannot all be held in the 40 MB left.
  await page.selectOption('#mode', 'batch');
  const names = ['bottle_broken_large_000.png', 'bottle_broken_large_001.jpg', 'bottle_broken_small_000.jpg', 'bottle_contamination_000.jpg',
    'bottle_good_000.jpg', 'bottle_good_001.jpg', 'bottle_good_002.jpg', 'bottle_train_good_001.jpg'];
  await dropLargePhotos(names, 1500);
  await page.waitForSelector('body[data-restarted="2"]', { timeout: 90_000 });

  assert.equal(
    await message(page),
    `Out of memory: this batch ${OOM} The detector was restarted: ${MODEL} is loaded again, 1 reference image(s) embedded again. ` +
      'Your settings and the 3 results already scored are kept.',
  );
  assert.equal(await page.getAttribute('body', 'data-worker-gen'), '2');
  assert.match(await page.textContent('#model-status'), new RegExp(`^Loaded ${MODEL.replace(/[()]/g, '\\$&')}`));
  assert.equal(await page.textContent('#image-status'), 'Batch not scored: the detector ran out of memory. The earlier results are kept.');
  // Settings kept.
  assert.equal(await page.inputValue('#mode'), 'batch');
  assert.equal(await page.inputValue('#category'), 'bottle');
  assert.equal(await page.inputValue('#threshold'), '0.3');
  // Results kept: in the grid and in the export.
  assert.deepEqual(await gridScores(), kept);
  const json = await exportJson();
  assert.equal(json.threshold, 0.3);
  assert.deepEqual(
    json.results.map((r) => [r.name, r.score, r.verdict, r.computedWith.mode]),
    [...kept].sort((x, y) => y.score - x.score).map((k) => [k.name, k.score, k.score >= 0.3 ? 'anomalous' : 'normal', 'fast']),
  );
  const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'oom-kept-results.png'), await page.screenshot({ fullPage: true }));

  // A kept result opens in the new worker (its map went back with it).
  const opened = page.evaluate(
    () => new Promise((r) => document.addEventListener('anoscope:drawn', (e) => r({ name: e.detail.name, score: e.detail.score }), { once: true })),
  );
  await page.locator('#grid li button').first().click();
  assert.deepEqual(await opened, kept[0]);
  assert.equal(await page.evaluate(() => document.getElementById('overlay').width > 0), true);

  // The next single image scores, exactly as before the restart (same model, same prompts) …
  await page.selectOption('#mode', 'fast');
  const again = await dropAndWait(page, [photo('bottle_good_000.jpg')]);
  assert.equal(again.score, kept.find((k) => k.name === 'bottle_good_000.jpg').score);
  // … and few-shot still has its reference (embedded again in the new worker).
  await page.selectOption('#mode', 'fewshot');
  const fewshotAgain = await dropAndWait(page, [photo('bottle_good_000.jpg')]);
  assert.equal(fewshotAgain.score, fewshot.score);
  await page.selectOption('#mode', 'fast');
});

test('one photo past the memory limit: the message says "this image", and the page goes on', { timeout: 120_000 }, async () => {
  await dropLargePhotos(['bottle_good_001.jpg'], 4000);
  await page.waitForSelector('body[data-restarted="3"]', { timeout: 90_000 });
  assert.match(await message(page), new RegExp(`^Out of memory: this image ${OOM.replace(/[().]/g, '\\$&')} The detector was restarted`));
  assert.match(await page.textContent('#image-status'), /^Stopped: the detector ran out of memory after 0 of 1 image/);
  const d = await dropAndWait(page, [photo('bottle_good_002.jpg')]);
  assert.ok(Number.isFinite(d.score));
  assert.equal(await message(page), '', 'the next good image clears the message');
});

test('a pool thread that dies reports it over its channel: the detector restarts', { timeout: 120_000 }, async (t) => {
  // Threaded build: the rayon pool's workers run through pool-guard.js, named by their channel.
  const guards = page.workers().map((w) => w.url()).filter((u) => /\/pool-guard\.js$/.test(u));
  if (guards.length === 0) {
    t.skip('the single-threaded build runs here (one core, or not cross-origin isolated)');
    return;
  }
  // The current detector's channel: the last one the page opened.
  const channel = await page.evaluate(() => globalThis.__channels.at(-1));
  assert.match(channel, /^anoscope-pool-/);
  const gen = Number(await page.getAttribute('body', 'data-worker-gen'));
  // What pool-guard.js sends when its thread traps (a real trap there cannot be provoked on cue:
  // the thread sits inside wasm until a job comes).
  await page.evaluate(
    (name) => new BroadcastChannel(name).postMessage({ type: 'fatal', request: 'pool', oom: true, error: 'a worker thread stopped: unreachable' }),
    channel,
  );
  await page.waitForSelector(`body[data-restarted="${gen + 1}"]`, { timeout: 90_000 });
  assert.match(await message(page), new RegExp(`^Out of memory: this batch .* The detector was restarted: ${MODEL.replace(/[()]/g, '\\$&')} is loaded again`));
  const d = await dropAndWait(page, [photo('bottle_good_002.jpg')]);
  assert.ok(Number.isFinite(d.score));
});

test('no page errors', { timeout: 10_000 }, async () => {
  assert.deepEqual(problems, []);
});
