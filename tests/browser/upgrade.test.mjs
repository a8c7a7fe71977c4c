// Upgrades and deployment: a site visited as v1 (offline copy kept), redeployed as v2, runs v2
// after a reload with v1's caches gone and the cached checkpoint kept; a half-deployed site is
// refused with a message naming the mismatch (never run mixed), and works once the deploy is
// complete. v2 is made without a second cargo build: the same site with a changed stylesheet and
// a custom section appended to each wasm, indexed again (new build id, sha256s, stamps).
import assert from 'node:assert/strict';
import { appendFileSync, cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { browser, describePage, dropAndWait, image, loadTestModel, makeSite, message, openPage, ready, serve } from './harness.mjs';
import { indexSite } from './site-index.mjs';

const WEIGHTS_CACHE = 'anoscope-weights-v1';
const MODEL = 'models/test-tiny/model.safetensors';
const CONFIG = 'models/test-tiny/config.json';

/** Unsigned LEB128. */
function leb128(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
}

/** A wasm custom section (id 0): size, name size, name, payload. */
function customSection(name, payload) {
  const body = Buffer.concat([leb128(name.length), Buffer.from(name), Buffer.from(payload)]);
  return Buffer.concat([Buffer.from([0]), leb128(body.length), body]);
}

// The site's wasm builds (the threaded and relaxed-SIMD ones where built).
const PKGS = ['pkg', 'pkg-threads', 'pkg-relaxed', 'pkg-threads-relaxed'];

/** Turns the site in `dir` into another version (`tag`): new page bytes and new wasm bytes. */
async function newVersion(dir, tag) {
  appendFileSync(join(dir, 'style.css'), `\n/* deploy ${tag} */\n`);
  for (const pkg of PKGS) {
    const wasm = join(dir, pkg, 'anoscope_bg.wasm');
    try {
      appendFileSync(wasm, customSection('anoscope-deploy', tag));
    } catch (e) {
      if (e.code !== 'ENOENT' || pkg === 'pkg') throw e; // no threaded or relaxed build: fewer wasm
    }
  }
  return (await indexSite(dir)).build;
}

// The pages run the single-threaded build (?threads=1, kept across reloads). With the threaded
// build's pool threads, headless Chromium 156 sometimes (1 run in 5 to 16 on a loaded 2-core
// machine; none in 16 with one thread) keeps the old service worker busy after a reload, so the
// new one, installed and told to skip waiting, is activated only at Chromium's 5-minute limit
// and a navigation can wait for it (docs/page.md, "Upgrades and deployment"). What these tests
// check, the deploy, does not depend on the build; offline-embed-csp.test.mjs runs the default
// (threaded) page offline.
const pageUrl = (server) => `${server.url}?threads=1`;
const buildOf = (dir) => JSON.parse(readFileSync(join(dir, 'build.json'), 'utf8'));
const wasmShas = (build) =>
  [build.wasm, build.wasmThreads, build.wasmRelaxed, build.wasmThreadsRelaxed].map((e) => e?.sha256).filter(Boolean);
/** Server log lines for `path` (e.g. "GET /models/… -> 200") from index `from` on. */
const hits = (server, path, from = 0) => server.log.slice(from).filter((l) => l.startsWith(`GET /${path} `)).length;

function cacheKeys(page) {
  return page.evaluate(async () => (await caches.keys()).sort());
}

/** Waits until the shell caches are exactly `want` (the new service worker activated). */
async function waitShellCaches(page, want, timeout = 30_000) {
  const t0 = Date.now();
  let keys;
  for (;;) {
    keys = (await cacheKeys(page)).filter((k) => k.startsWith('anoscope-shell-'));
    if (JSON.stringify(keys) === JSON.stringify(want)) return;
    if (Date.now() - t0 > timeout) {
      assert.fail(`shell caches ${JSON.stringify(keys)}, expected ${JSON.stringify(want)}\n${await describePage(page)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Waits until no service worker is installing (an install finished or failed). */
function settledServiceWorker(page) {
  return page.waitForFunction(
    async () => {
      const reg = await navigator.serviceWorker.getRegistration();
      return !!reg?.active && !reg.installing && !reg.waiting;
    },
    null,
    { timeout: 30_000, polling: 250 },
  );
}

/** What runs: {build, wasm} from the page's data attributes. */
function running(page) {
  return page.evaluate(() => ({ build: document.body.dataset.build, wasm: document.body.dataset.wasmSha256 }));
}

/** Reloads the page and waits for the version refusal; returns the alert text. */
async function reloadRefused(page, pattern) {
  await page.reload();
  await page.waitForFunction((src) => new RegExp(src).test(document.getElementById('message').textContent), pattern.source, {
    timeout: 60_000,
  });
  return message(page);
}

/** Visits v1 with the test model (cached) and one scored image, the service worker in control. */
async function firstVisit(page, v1) {
  await ready(page);
  await page.evaluate(() => navigator.serviceWorker.ready);
  await loadTestModel(page, { complete: true });
  const d = await dropAndWait(page, [{ name: 'a.jpg', type: 'image/jpeg', bytes: image('bottle_good_000.jpg') }]);
  assert.ok(Number.isFinite(d.score));
  await page.reload();
  await ready(page);
  assert.ok(await page.evaluate(() => !!navigator.serviceWorker.controller), 'no service worker controls the page');
  const r = await running(page);
  assert.equal(r.build, v1.id);
  assert.ok(wasmShas(v1).includes(r.wasm), `runs wasm ${r.wasm}, not v1's`);
  await waitShellCaches(page, [`anoscope-shell-${v1.id}`]);
  assert.ok((await cacheKeys(page)).includes(WEIGHTS_CACHE));
}

test('a redeployed site runs the new version after a reload; old caches go, the cached checkpoint stays', { timeout: 240_000 }, async () => {
  const site = makeSite();
  const v1 = buildOf(site);
  const next = makeSite();
  const v2 = await newVersion(next, 'v2');
  assert.notEqual(v2.id, v1.id);
  assert.notDeepEqual(wasmShas(v2), wasmShas(v1));
  const own = await serve(site);
  let again = null; // the server after the offline part
  const b = await browser();
  try {
    const { page, problems } = await openPage(b.context, pageUrl(own));
    await firstVisit(page, v1);
    assert.equal(hits(own, MODEL), 1, 'the checkpoint is downloaded once');

    // The deploy: every file of v2 over v1 (same URLs), then a reload.
    const mark = own.log.length;
    cpSync(next, site, { recursive: true });
    await page.reload();
    await ready(page);
    const r = await running(page);
    assert.equal(r.build, v2.id, 'the page runs v2');
    assert.ok(wasmShas(v2).includes(r.wasm), `runs wasm ${r.wasm}, not v2's`);
    assert.match(await page.textContent('#engine-status'), new RegExp(`Detector ready \\(anoscope .*, build ${v2.id}\\)`));
    assert.equal(await page.getAttribute('meta[name="anoscope-build"]', 'content'), v2.id);
    // v2's service worker took over: v1's shell cache is gone, the checkpoint cache is not.
    await waitShellCaches(page, [`anoscope-shell-${v2.id}`]);
    assert.ok((await cacheKeys(page)).includes(WEIGHTS_CACHE));
    await loadTestModel(page, { complete: true });
    const d = await dropAndWait(page, [{ name: 'b.jpg', type: 'image/jpeg', bytes: image('bottle_broken_small_000.jpg') }]);
    assert.ok(Number.isFinite(d.score));
    assert.equal(hits(own, MODEL, mark), 0, 'the checkpoint (same sha256) was downloaded again');
    assert.equal(hits(own, CONFIG, mark), 0, 'the config (same sha256) was downloaded again');
    assert.ok(PKGS.reduce((n, pkg) => n + hits(own, `${pkg}/anoscope_bg.wasm`, mark), 0) >= 1);

    // v2 works offline: its service worker cached all of v2.
    await page.reload(); // controlled by v2's service worker from here
    await ready(page);
    await own.kill();
    await page.reload();
    await ready(page);
    assert.equal((await running(page)).build, v2.id, 'offline, the page runs v2');
    await loadTestModel(page);
    assert.ok(Number.isFinite((await dropAndWait(page, [{ name: 'c.jpg', type: 'image/jpeg', bytes: image('bottle_good_001.jpg') }])).score));

    // v3 changes the checkpoint's config (new sha256, same URL): that file is downloaded again.
    again = await serve(site, { port: new URL(own.url).port });
    const v3dir = makeSite();
    cpSync(site, v3dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(v3dir, CONFIG), 'utf8'));
    writeFileSync(join(v3dir, CONFIG), `${JSON.stringify(config, null, 1)}\n`);
    const v3 = await newVersion(v3dir, 'v3');
    cpSync(v3dir, site, { recursive: true });
    rmSync(v3dir, { recursive: true, force: true });
    await page.reload();
    await ready(page);
    assert.equal((await running(page)).build, v3.id);
    await loadTestModel(page, { complete: true });
    assert.equal(hits(again, CONFIG), 1, 'the changed config was not downloaded again');
    assert.equal(hits(again, MODEL), 0, 'the unchanged checkpoint was downloaded again');
    const want = JSON.parse(readFileSync(join(site, 'models.json'), 'utf8')).models.find((m) => m.name === 'test-tiny').config.sha256;
    assert.notEqual(want, JSON.parse(readFileSync(join(next, 'models.json'), 'utf8')).models.find((m) => m.name === 'test-tiny').config.sha256);
    const stored = await page.evaluate(
      async ([name, url]) => (await (await caches.open(name)).match(url))?.headers.get('x-anoscope-sha256'),
      [WEIGHTS_CACHE, new URL(CONFIG, own.url).href],
    );
    assert.equal(stored, want, 'the cached config is not the new one');
    assert.deepEqual(problems, []);
  } finally {
    // Every server, whatever failed: a server left running keeps the test process alive.
    again?.stop();
    await b.close();
    own.stop();
    rmSync(next, { recursive: true, force: true });
  }
});

test('a half-deployed site is refused with the mismatch named; the deploy completed, a reload works', { timeout: 300_000 }, async () => {
  const site = makeSite();
  const v1dir = makeSite();
  const v1 = buildOf(site);
  const next = makeSite();
  const v2 = await newVersion(next, 'v2');
  let own = await serve(site);
  const port = new URL(own.url).port;
  const b = await browser();
  try {
    const { page } = await openPage(b.context, pageUrl(own));
    await firstVisit(page, v1);
    const workers = () => page.workers().length;

    // 1. New index.html, everything else old: the page refuses before starting the worker.
    let mark = own.log.length;
    cpSync(join(next, 'index.html'), join(site, 'index.html'));
    let text = await reloadRefused(page, /is version/);
    assert.equal(text, `This page's index.html is version ${v2.id} but its main.js is version ${v1.id}: the site is being redeployed: reload in a minute. Nothing was started.`);
    assert.equal(await page.getAttribute('body', 'data-deploy'), 'mismatch');
    assert.equal(hits(own, 'worker.js', mark), 0, 'the worker was started');
    assert.equal(workers(), 0);
    assert.match(await page.textContent('#engine-status'), /^Not started: this page and the server are from different versions/);
    assert.equal(await page.isDisabled('#image-files'), true);

    // 1b. Only a new stylesheet (a file without a stamp): its sha256 is not v1's, refused.
    mark = own.log.length;
    cpSync(join(v1dir, 'index.html'), join(site, 'index.html'));
    cpSync(join(next, 'style.css'), join(site, 'style.css'));
    text = await reloadRefused(page, /style\.css/);
    assert.equal(
      text,
      `The server's style.css is not the one of version ${v1.id} (sha256 ${v2.files['style.css'].slice(0, 12)}…, ` +
        `expected ${v1.files['style.css'].slice(0, 12)}…): the site is being redeployed: reload in a minute. Nothing was started.`,
    );
    assert.equal(hits(own, 'worker.js', mark), 0, 'the worker was started');
    assert.equal(workers(), 0);

    // 2. The new page and build.json with the old wasm: the worker refuses the wasm.
    mark = own.log.length;
    cpSync(next, site, { recursive: true });
    for (const pkg of PKGS) {
      try {
        cpSync(join(v1dir, pkg, 'anoscope_bg.wasm'), join(site, pkg, 'anoscope_bg.wasm'));
      } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
    }
    text = await reloadRefused(page, /integrity check/);
    assert.match(
      text,
      new RegExp(
        `^The WebAssembly module \\(pkg(-threads)?(-relaxed)?/anoscope_bg\\.wasm\\) failed its integrity check \\(sha256 (${wasmShas(v1).join('|')}), ` +
          `expected (${wasmShas(v2).join('|')})\\): it is not the file build\\.json of version ${v2.id} lists\\.`,
      ),
    );
    assert.match(text, /a deploy in progress: reload in a minute/);
    assert.equal(await page.getAttribute('body', 'data-deploy'), 'mismatch');
    assert.equal(hits(own, MODEL, mark) + hits(own, CONFIG, mark), 0, 'a model was loaded');
    assert.equal(await page.textContent('#model-status'), 'No model loaded.');
    assert.equal(await page.getAttribute('body', 'data-ready'), null);
    // v2's service worker could not cache a consistent v2: v1 stays installed.
    await page.evaluate(async () => {
      await (await navigator.serviceWorker.getRegistration())?.update().catch(() => {});
    });
    await settledServiceWorker(page);
    await waitShellCaches(page, [`anoscope-shell-${v1.id}`]);

    // Offline now, the installed v1 runs (nothing the person had is lost).
    await own.kill();
    await page.reload();
    await ready(page);
    assert.equal((await running(page)).build, v1.id);
    await loadTestModel(page);
    assert.ok(Number.isFinite((await dropAndWait(page, [{ name: 'a.jpg', type: 'image/jpeg', bytes: image('bottle_good_000.jpg') }])).score));

    // 3. The reverse: the old page with the new wasm and build.json: the page refuses.
    own = await serve(site, { port });
    cpSync(v1dir, site, { recursive: true });
    for (const f of ['build.json', ...PKGS]) {
      try {
        cpSync(join(next, f), join(site, f), { recursive: true });
      } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
    }
    mark = own.log.length;
    text = await reloadRefused(page, /is version/);
    assert.equal(
      text,
      `This page is version ${v1.id} but the server's build.json says ${v2.id} (wasm sha256 ${v2.wasm.sha256.slice(0, 12)}…): ` +
        'the site is being redeployed: reload in a minute. Nothing was started.',
    );
    assert.equal(hits(own, 'worker.js', mark), 0, 'the worker was started');
    assert.equal(workers(), 0);

    // 4. The deploy completes: a reload runs v2, with the cached checkpoint.
    cpSync(next, site, { recursive: true });
    mark = own.log.length;
    await page.reload();
    await ready(page);
    const r = await running(page);
    assert.equal(r.build, v2.id);
    assert.ok(wasmShas(v2).includes(r.wasm));
    assert.equal(await message(page), '');
    await loadTestModel(page, { complete: true });
    assert.ok(Number.isFinite((await dropAndWait(page, [{ name: 'b.jpg', type: 'image/jpeg', bytes: image('bottle_good_001.jpg') }])).score));
    assert.equal(hits(own, MODEL, mark), 0, 'the checkpoint was downloaded again');
    await waitShellCaches(page, [`anoscope-shell-${v2.id}`]);
  } finally {
    await b.close();
    own.stop();
    for (const d of [v1dir, next]) rmSync(d, { recursive: true, force: true });
  }
});
