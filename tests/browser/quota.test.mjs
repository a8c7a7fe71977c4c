// Storage and quota: when the browser refuses to keep the checkpoint (quota exceeded, no Cache
// API as in some private windows, site data cleared while the page is open) the model still
// loads from the download and scores, the page says offline use is unavailable and why, and no
// entry is left in the checkpoint cache; a later visit with storage back downloads and keeps it.
// The test hook ?cachefail=quota|unavailable|cleared, and a real small quota (CDP
// Storage.overrideQuotaForOrigin).
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { test } from 'node:test';
import { browser, dropAndWait, image, loadTestModel, makeSite, message, openPage, ready, serve } from './harness.mjs';

const WEIGHTS_CACHE = 'anoscope-weights-v1';
const MODEL = 'models/test-tiny/model.safetensors';
const hits = (server, path, from = 0) => server.log.slice(from).filter((l) => l.startsWith(`GET /${path} `)).length;
// The interface test model's size as the page words it ("1.1 MB").
const MODEL_MB = (statSync(new URL(`../../www/dist/${MODEL}`, import.meta.url)).size / 1e6).toFixed(1).replace('.', '\\.');
const NOTE = (reason) =>
  new RegExp(
    `^Offline use is unavailable: the ${MODEL_MB} MB model could not be kept in the browser's storage \\(${reason}\\)\\. ` +
      'It runs now from the download; the next visit downloads it again\\.$',
  );

/** The storage note's text, '' when hidden. */
const note = (page) => page.evaluate(() => (document.getElementById('storage-note').hidden ? '' : document.getElementById('storage-note').textContent));

/** The checkpoint cache's entry for the test model's weights: its x-anoscope-sha256, or null. */
function storedWeights(page, url) {
  return page.evaluate(
    async ([name, url]) => (await (await caches.open(name)).match(url))?.headers.get('x-anoscope-sha256') ?? null,
    [WEIGHTS_CACHE, url],
  );
}

/** Loads the test model (all of it), scores a real photo; returns the score. */
async function loadAndScore(page) {
  await loadTestModel(page, { complete: true });
  const d = await dropAndWait(page, [{ name: 'bottle_broken_large_001.jpg', type: 'image/jpeg', bytes: image('bottle_broken_large_001.jpg') }]);
  assert.ok(Number.isFinite(d.score), `score ${d.score}`);
  assert.equal(await message(page), '');
  return d.score;
}

/** Waits until the weights are stored (the put of a streamed download ends after the load). */
async function waitStored(page, url, sha) {
  await page.waitForFunction(
    async ([name, url, sha]) => (await (await caches.open(name)).match(url))?.headers.get('x-anoscope-sha256') === sha,
    [WEIGHTS_CACHE, url, sha],
    { timeout: 30_000, polling: 200 },
  );
}

async function modelSha(page) {
  return page.evaluate(async () => (await (await fetch('models.json')).json()).models.find((m) => m.test).weights.sha256);
}

test('quota exceeded (test hook): the model runs from the download, the page says why, nothing is kept; the next visit keeps it', { timeout: 180_000 }, async () => {
  const own = await serve(makeSite());
  const b = await browser();
  try {
    const { page, problems } = await openPage(b.context, `${own.url}?cachefail=quota`);
    const url = new URL(MODEL, own.url).href;
    await ready(page);
    const score = await loadAndScore(page);
    assert.match(await note(page), NOTE('the storage quota is exceeded'));
    assert.equal(await storedWeights(page, url), null, 'a refused copy was left in the cache');
    assert.deepEqual(
      await page.evaluate(async (name) => (await (await caches.open(name)).keys()).map((r) => r.url), WEIGHTS_CACHE),
      [],
      'the config or prompt file was kept although storing was refused',
    );
    // Storage is back: the next visit downloads the checkpoint again and keeps it.
    let mark = own.log.length;
    await page.goto(own.url);
    await ready(page);
    assert.equal(await loadAndScore(page), score);
    assert.equal(hits(own, MODEL, mark), 1);
    assert.equal(await note(page), '');
    await waitStored(page, url, await modelSha(page));
    // And the one after loads it from the cache.
    mark = own.log.length;
    await page.reload();
    await ready(page);
    assert.equal(await loadAndScore(page), score);
    assert.equal(hits(own, MODEL, mark), 0, 'the kept copy was not used');
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    own.stop();
  }
});

test('no Cache API (private window) and storage cleared while the page is open (test hooks)', { timeout: 180_000 }, async () => {
  const own = await serve(makeSite());
  const b = await browser();
  try {
    const url = new URL(MODEL, own.url).href;
    const { page, problems } = await openPage(b.context, `${own.url}?cachefail=unavailable`);
    await ready(page);
    await loadAndScore(page);
    assert.match(await note(page), NOTE('the browser gives this page no storage here, as in some private windows'));
    assert.equal(await storedWeights(page, url), null);

    const mark = own.log.length;
    await page.goto(`${own.url}?cachefail=cleared`);
    await ready(page);
    await loadAndScore(page);
    assert.equal(hits(own, MODEL, mark), 1, 'the checkpoint was not downloaded');
    assert.match(await note(page), NOTE("the site's stored data was cleared while the page was open"));
    assert.equal(await storedWeights(page, url), null, 'a copy survived the clearing');
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    own.stop();
  }
});

test('a real small quota (CDP Storage.overrideQuotaForOrigin): the same; with the quota back the copy is kept; cleared for real, downloaded again', { timeout: 180_000 }, async () => {
  const own = await serve(makeSite());
  const b = await browser();
  try {
    const page = await b.context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    const cdp = await b.context.newCDPSession(page);
    const origin = new URL(own.url).origin;
    const url = new URL(MODEL, own.url).href;
    // 600 kB: the config and the prompt file (35 kB) fit, the checkpoint (over 1 MB) does not.
    assert.ok(statSync(new URL(`../../www/dist/${MODEL}`, import.meta.url)).size > 1_000_000, 'the test model outgrows the quota');
    await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 600_000 });
    await page.goto(own.url);
    await ready(page);
    const score = await loadAndScore(page);
    assert.match(await note(page), NOTE('the storage quota is exceeded'));
    assert.equal(await storedWeights(page, url), null, 'a partial copy was left in the cache');
    const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage);
    assert.ok(usage < 1_000_000, `usage ${usage} over the quota`);

    await cdp.send('Storage.overrideQuotaForOrigin', { origin }); // the browser's own quota again
    const mark = own.log.length;
    await page.reload();
    await ready(page);
    assert.equal(await loadAndScore(page), score);
    assert.equal(hits(own, MODEL, mark), 1);
    assert.equal(await note(page), '');
    await waitStored(page, url, await modelSha(page));

    // The site's storage cleared for real (as "Clear site data" does) while the page is open: the
    // loaded model keeps scoring, and the next visit downloads the checkpoint again and keeps it.
    await cdp.send('Storage.clearDataForOrigin', { origin, storageTypes: 'cache_storage' });
    assert.equal(await storedWeights(page, url), null);
    const d = await dropAndWait(page, [{ name: 'g.jpg', type: 'image/jpeg', bytes: image('bottle_good_002.jpg') }]);
    assert.ok(Number.isFinite(d.score));
    const before = own.log.length;
    await page.reload();
    await ready(page);
    assert.equal(await loadAndScore(page), score);
    assert.equal(hits(own, MODEL, before), 1);
    await waitStored(page, url, await modelSha(page));
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    own.stop();
  }
});

test('a damaged copy in the cache is never trusted: the load says so and drops it, the next load downloads', { timeout: 180_000 }, async () => {
  const own = await serve(makeSite());
  const b = await browser();
  try {
    const { page, problems } = await openPage(b.context, own.url);
    const url = new URL(MODEL, own.url).href;
    await ready(page);
    const score = await loadAndScore(page);
    const sha = await modelSha(page);
    await waitStored(page, url, sha);
    // One flipped byte near the end (the text tower's data), same size and headers.
    await page.evaluate(
      async ([name, url]) => {
        const cache = await caches.open(name);
        const hit = await cache.match(url);
        const bytes = new Uint8Array(await hit.arrayBuffer());
        bytes[bytes.length - 10] ^= 0xff;
        await cache.put(url, new Response(bytes, { headers: hit.headers }));
      },
      [WEIGHTS_CACHE, url],
    );
    let mark = own.log.length;
    await page.reload();
    await ready(page);
    await page.getByRole('button', { name: /interface test model/ }).click();
    await page.waitForFunction(() => /stored copy/.test(document.getElementById('message').textContent), null, { timeout: 60_000 });
    assert.match(
      await message(page),
      new RegExp(`^Could not load the model: the stored copy of .* weights is damaged: sha256 [0-9a-f]{64} \\(\\d+ bytes\\), expected ${sha}\\. It was removed; load the model again to download it\\.$`),
    );
    assert.equal(await page.textContent('#model-status'), 'No model loaded.');
    assert.equal(hits(own, MODEL, mark), 0);
    assert.equal(await storedWeights(page, url), null, 'the damaged copy was kept');
    mark = own.log.length;
    assert.equal(await loadAndScore(page), score);
    assert.equal(hits(own, MODEL, mark), 1);
    await waitStored(page, url, sha);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
    own.stop();
  }
});
