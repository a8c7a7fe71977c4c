// Concurrency and cancel (issue 20 §4): each case ends in a defined state with a message, and no
// result is drawn under settings it was not computed with. The page runs with ?stepdelay=MS (a
// test hook: every scoring step in the worker takes MS ms longer) so "mid-run" is certain.
// Defined behaviour (main.js, "runs, settings stamps, cancel and restarts"):
// - a drop during a model load waits for the load, then is scored with the new model;
// - two drops at once are both scored, the second after the first (the later one is shown);
// - Cancel stops a multi-image run between images and a MuSc batch at its next step;
// - switching the model mid-batch cancels the batch; the earlier results stay, labelled with
//   the model they were computed with (grid note, and `computedWith` in the JSON export);
// - changing the mode while WinCLIP runs discards its result and says to drop the image again;
// - turning the webcam off mid-pass discards the in-flight frame's result;
// - hiding the tab mid-batch does not pause it: the batch finishes.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, TEST_MODEL_BUTTON, browser, dropFiles, image, makeSite, message, openPage, ready, serve, waitLoaded } from './harness.mjs';

const STEP_MS = 250;
const sha = (b) => createHash('sha256').update(b).digest('hex');
const tiny = join(ROOT, 'tests', 'fixtures', 'hf_tiny');
const weights = readFileSync(join(tiny, 'model.safetensors'));
const config = readFileSync(join(tiny, 'config.json'));
const manifest = {
  schema: 1,
  models: [
    {
      name: 'other-tiny',
      layout: 'hf',
      files: [
        { name: 'config.json', url: '__ORIGIN__/dl/config.json', size: config.length, sha256: sha(config) },
        { name: 'model.safetensors', url: '__ORIGIN__/dl/model.safetensors', size: weights.length, sha256: sha(weights) },
      ],
    },
  ],
};

const PHOTOS = [
  'bottle_broken_large_000.png',
  'bottle_broken_large_001.jpg',
  'bottle_broken_small_000.jpg',
  'bottle_contamination_000.jpg',
  'bottle_good_000.jpg',
  'bottle_good_001.jpg',
  'bottle_good_002.jpg',
  'bottle_train_good_000.jpg',
];
const photo = (name) => ({ name, type: name.endsWith('.png') ? 'image/png' : 'image/jpeg', bytes: image(name) });

let server;
let b;
let page;
let problems;

const status = () => page.textContent('#image-status');
const drawn = () => page.evaluate(() => window.__drawn.map((d) => d.name));
const gridScores = () => page.$$eval('#grid li button', (bs) => bs.map((x) => ({ name: x.textContent.split(':')[0], score: Number(x.dataset.score) })));

async function exportJson() {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  return JSON.parse(readFileSync(await dl.path(), 'utf8'));
}

/** Waits until the progress line shows MuSc at work (past its first step). */
async function waitMusc() {
  await page.waitForFunction(() => /^MuSc \w+: [1-9]\d* of \d+/.test(document.getElementById('progress-text').textContent), null, {
    timeout: 30_000,
  });
}

before(async () => {
  const site = makeSite({ 'dl/config.json': config, 'dl/model.safetensors': weights });
  server = await serve(site);
  writeFileSync(join(site, 'weights', 'manifest.json'), JSON.stringify(manifest).replaceAll('__ORIGIN__', server.url.replace(/\/$/, '')));
  b = await browser({ fakeMedia: true });
  ({ page, problems } = await openPage(b.context, `${server.url}?stepdelay=${STEP_MS}`));
  await page.evaluate(() => {
    window.__drawn = [];
    document.addEventListener('anoscope:drawn', (e) => window.__drawn.push({ name: e.detail.name, score: e.detail.score }));
    window.__statuses = [];
    const el = document.getElementById('image-status');
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) window.__statuses.push(n.textContent);
    }).observe(el, { childList: true });
  });
  await ready(page);
});

after(async () => {
  await b?.close();
  server?.stop();
});

test('a drop during the model load waits for the model, then is scored with it', { timeout: 90_000 }, async () => {
  // The checkpoint download is held back 1.5 s so the drop lands mid-load.
  await b.context.route('**/models/test-tiny/model.safetensors', async (route) => {
    await new Promise((r) => setTimeout(r, 1500));
    await route.continue();
  });
  await page.getByRole('button', { name: TEST_MODEL_BUTTON }).click();
  await dropFiles(page, '#drop', [photo('bottle_good_000.jpg')]);
  await page.waitForFunction(() => window.__drawn.length === 1, null, { timeout: 60_000 });
  await b.context.unroute('**/models/test-tiny/model.safetensors');
  const seen = await page.evaluate(() => window.__statuses);
  assert.ok(
    seen.some((t) => t === 'Waiting for the model to load before scoring image bottle_good_000.jpg…'),
    `statuses: ${JSON.stringify(seen)}`,
  );
  assert.match(await page.textContent('#model-status'), /^Loaded interface test model/);
  assert.deepEqual(await drawn(), ['bottle_good_000.jpg']);
  assert.equal(await status(), 'Scored 1 of 1 image (fast).');
  assert.equal(await message(page), '');
});

test('two drops at once: both are scored, one after the other, and the later one is shown', { timeout: 90_000 }, async () => {
  const before = (await drawn()).length;
  const payload = [
    [photo('bottle_good_001.jpg'), photo('bottle_good_002.jpg')],
    [photo('bottle_broken_small_000.jpg')],
  ].map((fs) => fs.map((f) => ({ name: f.name, type: f.type, b64: f.bytes.toString('base64') })));
  await page.evaluate((drops) => {
    for (const files of drops) {
      const dt = new DataTransfer();
      for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name, { type: f.type }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }
  }, payload);
  await page.waitForFunction((n) => window.__drawn.length === n + 3 && !/…$/.test(document.getElementById('image-status').textContent), before, {
    timeout: 60_000,
  });
  // Serialized: the first drop's two images, then the second drop's one (never interleaved).
  assert.deepEqual((await drawn()).slice(before), ['bottle_good_001.jpg', 'bottle_good_002.jpg', 'bottle_broken_small_000.jpg']);
  const seen = await page.evaluate(() => window.__statuses);
  assert.ok(seen.some((t) => /^Queued: image bottle_broken_small_000\.jpg will be scored when the current work is done\.$/.test(t)), JSON.stringify(seen));
  assert.ok(seen.includes('Scored 2 of 2 images (fast).'), 'the first drop finished on its own');
  assert.equal(await status(), 'Scored 1 of 1 image (fast).');
  assert.match(await page.textContent('#verdict'), /^bottle_broken_small_000\.jpg: score/);
  assert.equal(await message(page), '');
});

test('cancel during a multi-image run stops between images and keeps what was scored', { timeout: 90_000 }, async () => {
  const before = (await drawn()).length;
  // Cancel is pressed in the page as the second image is drawn (no race with a slow machine).
  await page.evaluate((n) => {
    const onDrawn = () => {
      if (window.__drawn.length < n + 2) return;
      document.removeEventListener('anoscope:drawn', onDrawn);
      window.__cancelShown = !document.getElementById('cancel').hidden;
      document.getElementById('cancel').click();
    };
    document.addEventListener('anoscope:drawn', onDrawn);
  }, before);
  await dropFiles(page, '#drop', PHOTOS.slice(0, 6).map(photo));
  await page.waitForFunction(() => /^Stopped/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  const text = await status();
  const m = text.match(/^Stopped \(cancelled\): scored (\d) of 6 images \(fast\)\. Drop the rest again to score them\.$/);
  assert.ok(m, text);
  const k = Number(m[1]);
  assert.ok(k >= 2 && k < 6, `scored ${k}`);
  assert.equal(await page.evaluate(() => window.__cancelShown), true, 'the cancel button shows during the run');
  await page.waitForTimeout(2 * STEP_MS);
  assert.equal((await drawn()).length - before, k, 'nothing is drawn after the cancel');
  const grid = await gridScores();
  assert.equal(grid.length, k);
  assert.deepEqual(grid.map((g) => g.name).sort(), PHOTOS.slice(0, k).sort());
  assert.equal(await page.isHidden('#cancel'), true);
  assert.equal(await message(page), '');
});

test('cancel during a MuSc batch stops it mid-run; the earlier results are kept', { timeout: 90_000 }, async () => {
  const earlier = await gridScores();
  assert.ok(earlier.length >= 2);
  await page.selectOption('#mode', 'batch');
  await dropFiles(page, '#drop', PHOTOS.map(photo));
  await waitMusc();
  await page.waitForSelector('#cancel:not([hidden])');
  const shot = await page.screenshot({ fullPage: true });
  const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'cancel-mid-batch.png'), shot);
  const t0 = Date.now();
  await page.click('#cancel');
  await page.waitForFunction(() => /^Batch cancelled/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  const took = Date.now() - t0;
  // 8 images: 8 encoding steps and the scoring steps at STEP_MS each; the cancel acts at the next one.
  assert.ok(took < 4 * STEP_MS + 1000, `the cancel took ${took} ms`);
  const progress = await page.textContent('#progress-text');
  const [, done, total] = progress.match(/(\d+) of (\d+)/).map(Number);
  assert.ok(done < total, `MuSc ran to the end (${progress})`);
  assert.equal(await status(), 'Batch cancelled (cancelled).');
  assert.equal(await message(page), 'Batch cancelled (cancelled): nothing of it was scored. The earlier results are kept.');
  assert.deepEqual(await gridScores(), earlier);
  // The worker is not left cancelled: the next batch runs to the end.
  await dropFiles(page, '#drop', PHOTOS.slice(0, 3).map(photo));
  await page.waitForFunction(() => /^Scored 3 images with MuSc/.test(document.getElementById('image-status').textContent), null, {
    timeout: 60_000,
  });
  assert.equal((await gridScores()).length, 3);
});

test('switching the model mid-batch cancels the batch; earlier results stay, labelled with their model', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'fast');
  await dropFiles(page, '#drop', PHOTOS.slice(0, 2).map(photo));
  await page.waitForFunction(() => /fast mode, category bottle\.$/.test(document.getElementById('grid-note').textContent), null, {
    timeout: 60_000,
  });
  const earlier = await gridScores();
  assert.equal(earlier.length, 2);
  assert.match(await page.textContent('#grid-note'), /^Scored with interface test model .*, fast mode, category bottle\.$/);
  await page.selectOption('#mode', 'batch');
  await dropFiles(page, '#drop', PHOTOS.map(photo));
  await waitMusc();
  await page.getByRole('button', { name: /^Download other-tiny/ }).click();
  await waitLoaded(page, 'other-tiny');
  await page.waitForFunction(() => window.__statuses.some((t) => /^Batch cancelled/.test(t)), null, { timeout: 30_000 });
  assert.ok((await page.evaluate(() => window.__statuses)).includes('Batch cancelled (the model was changed to other-tiny).'));
  assert.equal(
    await message(page),
    'Batch cancelled (the model was changed to other-tiny): nothing of it was scored. The earlier results are kept.',
  );
  assert.deepEqual(await gridScores(), earlier);
  const note = await page.textContent('#grid-note');
  assert.match(note, /^Scored with interface test model .*, fast mode, category bottle; the settings have changed since \(now other-tiny, batch mode\)/);
  assert.equal(await page.getAttribute('#grid-note', 'data-stale'), 'true');
  const json = await exportJson();
  assert.equal(json.model, 'other-tiny');
  assert.deepEqual(
    json.results.map((r) => [r.name, r.score, r.computedWith.model, r.computedWith.mode]).sort(),
    earlier.map((g) => [g.name, g.score, 'interface test model (random weights, meaningless scores)', 'fast']).sort(),
  );
  // Back to the test model for the rest of the file.
  await page.getByRole('button', { name: TEST_MODEL_BUTTON }).click();
  await waitLoaded(page, 'interface test model');
});

test('changing the mode while WinCLIP runs discards its result and says to score again', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'winclip');
  const verdictBefore = await page.textContent('#verdict');
  const before = (await drawn()).length;
  // The mode is changed in the page as soon as the WinCLIP request is on its way (the worker
  // takes at least STEP_MS for it), as a person would while it runs.
  await page.evaluate(() => {
    const el = document.getElementById('image-status');
    const obs = new MutationObserver(() => {
      if (!/^Scoring bottle_contamination_000\.jpg \(1 of 1, winclip\)/.test(el.textContent)) return;
      obs.disconnect();
      const mode = document.getElementById('mode');
      mode.value = 'fast';
      mode.dispatchEvent(new Event('change'));
    });
    obs.observe(el, { childList: true });
  });
  await dropFiles(page, '#drop', [photo('bottle_contamination_000.jpg')]);
  await page.waitForFunction(() => /^Stopped/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  assert.match(
    await status(),
    /^Stopped \(the settings changed \(now interface test model .*, fast mode, category bottle\)\): scored 0 of 1 image \(winclip\)\. The result computed under the old settings was discarded\. Drop the rest again to score them\.$/,
  );
  assert.equal((await drawn()).length, before, 'the WinCLIP result was drawn under fast mode');
  assert.equal(await page.textContent('#verdict'), verdictBefore);
  await dropFiles(page, '#drop', [photo('bottle_contamination_000.jpg')]);
  await page.waitForFunction((n) => window.__drawn.length === n + 1, before, { timeout: 30_000 });
  assert.equal(await status(), 'Scored 1 of 1 image (fast).');
});

test('turning the webcam off mid-pass discards the frame being scored', { timeout: 90_000 }, async () => {
  await page.click('#webcam');
  await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 2, null, { timeout: 60_000 });
  // Each frame takes at least STEP_MS in the worker, so one is in flight now.
  // Stopped in one go with reading what was drawn, so no frame lands in between.
  const { before, frames, text } = await page.evaluate(() => {
    const before = window.__drawn.length;
    const frames = Number(document.getElementById('webcam-status').dataset.frames);
    document.getElementById('webcam').click();
    return { before, frames, text: document.getElementById('webcam-status').textContent };
  });
  await page.waitForTimeout(3 * STEP_MS);
  assert.equal((await drawn()).length, before, 'a frame was drawn after the webcam was turned off');
  assert.equal(text, `Webcam off. ${frames} frames were scored. The frame being scored when it stopped was discarded.`);
  assert.equal(await page.textContent('#webcam-status'), text);
  assert.equal(await message(page), '');
});

test('hiding the tab mid-batch does not pause it: the batch finishes', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'batch');
  await dropFiles(page, '#drop', PHOTOS.slice(0, 6).map(photo));
  await waitMusc();
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    Object.defineProperty(document, 'hidden', { value: true, configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  // And frozen for a moment, as Chromium does to background tabs.
  const cdp = await b.context.newCDPSession(page);
  await cdp.send('Page.setWebLifecycleState', { state: 'frozen' });
  await new Promise((r) => setTimeout(r, 2 * STEP_MS));
  await cdp.send('Page.setWebLifecycleState', { state: 'active' });
  await page.waitForFunction(() => /^Scored 6 images with MuSc/.test(document.getElementById('image-status').textContent), null, {
    timeout: 60_000,
  });
  await page.evaluate(() => {
    delete document.visibilityState;
    delete document.hidden;
  });
  assert.equal((await gridScores()).length, 6);
  assert.equal(await message(page), '');
  await page.selectOption('#mode', 'fast');
});

test('no page errors during the concurrency cases', { timeout: 10_000 }, async () => {
  assert.deepEqual(problems, []);
});

test('without cross-origin isolation (no SharedArrayBuffer) cancel still stops a run between images', { timeout: 90_000 }, async () => {
  // The same site with its COOP/COEP headers removed: the worker gets {type:'cancel'} messages.
  const other = await browser();
  try {
    await other.context.route('**/*', async (route) => {
      const res = await route.fetch();
      const headers = { ...res.headers() };
      delete headers['cross-origin-opener-policy'];
      delete headers['cross-origin-embedder-policy'];
      await route.fulfill({ response: res, headers });
    });
    const { page: p, problems: probs } = await openPage(other.context, `${server.url}?stepdelay=${STEP_MS}`);
    await ready(p);
    assert.equal(await p.evaluate(() => globalThis.crossOriginIsolated), false);
    await p.getByRole('button', { name: TEST_MODEL_BUTTON }).click();
    await waitLoaded(p, 'interface test model');
    await p.evaluate(() => {
      let n = 0;
      const onDrawn = () => {
        n += 1;
        if (n < 2) return;
        document.removeEventListener('anoscope:drawn', onDrawn);
        document.getElementById('cancel').click();
      };
      document.addEventListener('anoscope:drawn', onDrawn);
    });
    await dropFiles(p, '#drop', PHOTOS.slice(0, 6).map(photo));
    await p.waitForFunction(() => /^Stopped/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
    const m = (await p.textContent('#image-status')).match(/^Stopped \(cancelled\): scored (\d) of 6 images \(fast\)\./);
    assert.ok(m && Number(m[1]) >= 2 && Number(m[1]) < 6, await p.textContent('#image-status'));
    assert.equal(await message(p), '');
    assert.deepEqual(probs, []);
  } finally {
    await other.close();
  }
});
