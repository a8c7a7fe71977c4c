// The main page in headless Chromium with the interface test model: drop, paste, picker,
// custom prompts, few-shot, batch, export, and zero network requests while scoring.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  ROOT,
  IMAGES,
  browser,
  canvasStats,
  dropAndWait,
  dropFiles,
  image,
  loadTestModel,
  makeSite,
  message,
  nextDrawn,
  openPage,
  pasteFile,
  ready,
  serve,
} from './harness.mjs';

let server;
let b;
let page;
let problems;
let cspViolations;

const bottle = () => ({ name: 'bottle_broken_large_000.png', type: 'image/png', bytes: image('bottle_broken_large_000.png') });

/** Server log lines and browser requests made while `fn` runs. */
async function requestsDuring(fn) {
  const s0 = server.log.length;
  const b0 = b.requests.length;
  await fn();
  await page.waitForTimeout(200);
  return { server: server.log.slice(s0), browser: b.requests.slice(b0) };
}

before(async () => {
  server = await serve(makeSite());
  b = await browser();
  ({ page, problems, cspViolations } = await openPage(b.context, server.url));
  await ready(page);
  // The service worker's first install fetches the shell: done before requests are counted.
  await page.evaluate(() => navigator.serviceWorker.ready);
  await loadTestModel(page);
});

after(async () => {
  await b?.close();
  server?.stop();
});

test('the page says which model is loaded and that the test model is meaningless', { timeout: 90_000 }, async () => {
  const status = await page.textContent('#model-status');
  assert.match(status, /interface test model \(random weights, meaningless scores\)/);
  assert.match(status, /Loaded /);
  const cats = await page.$$eval('#category option', (o) => o.map((x) => x.value));
  assert.ok(cats.includes('bottle'), `categories: ${cats}`);
  assert.equal(await page.inputValue('#category'), 'bottle');
  assert.match(await page.textContent('#backend'), /CPU/);
});

test('drop a bottle image: a score appears and the canvas holds a non-uniform heatmap', { timeout: 90_000 }, async () => {
  const net = await requestsDuring(async () => {
    const drawn = await dropAndWait(page, [bottle()]);
    assert.ok(Number.isFinite(drawn.score), `score ${drawn.score}`);
    assert.ok(drawn.score >= 0 && drawn.score <= 1, `score ${drawn.score}`);
  });
  assert.deepEqual(net, { server: [], browser: [] }, 'scoring a dropped image made network requests');
  const verdict = await page.textContent('#verdict');
  assert.match(verdict, /bottle_broken_large_000\.png: score \d\.\d{3} — (normal|anomalous) at threshold 0\.50/);
  // Opacity 1 shows the heatmap alone (inferno colours): it must vary over the image.
  await page.fill('#opacity', '1');
  await page.dispatchEvent('#opacity', 'input');
  await page.waitForTimeout(300);
  const s = await canvasStats(page);
  assert.ok(s.width > 0 && s.height > 0);
  assert.ok(s.colours >= 8, `heatmap has only ${s.colours} colours`);
  assert.ok(s.std > 5, `heatmap luminance std ${s.std}`);
  await page.fill('#opacity', '0.5');
  await page.dispatchEvent('#opacity', 'input');
  await page.waitForTimeout(300);
  // Written under target/ on every run.
  const shot = await page.screenshot({ fullPage: true });
  const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'screenshot.png'), shot);
  // docs/screenshot.png (a non-square photo with its regions) is refreshed by photo.test.mjs.
  assert.ok(shot.length > 10_000, `screenshot of ${shot.length} bytes`);
  const aria = await page.getAttribute('#overlay', 'aria-label');
  assert.match(aria, /score \d\.\d{3}/, 'the verdict has a text alternative on the canvas');
});

test('the threshold slider changes the verdict text and the outline', { timeout: 90_000 }, async () => {
  const score = Number(await page.getAttribute('#overlay', 'data-score'));
  const before = await canvasStats(page);
  await page.fill('#threshold', '0');
  await page.dispatchEvent('#threshold', 'input');
  await page.waitForFunction(() => /at threshold 0\.00/.test(document.getElementById('verdict').textContent));
  assert.match(await page.textContent('#verdict'), /anomalous at threshold 0\.00/);
  await page.fill('#threshold', '1');
  await page.dispatchEvent('#threshold', 'input');
  await page.waitForFunction(() => /at threshold 1\.00/.test(document.getElementById('verdict').textContent));
  assert.match(await page.textContent('#verdict'), score >= 1 ? /anomalous/ : /normal at threshold 1\.00/);
  await page.fill('#threshold', '0.5');
  await page.dispatchEvent('#threshold', 'input');
  await page.waitForFunction(() => /at threshold 0\.50/.test(document.getElementById('verdict').textContent));
  const again = await canvasStats(page);
  assert.equal(again.colours, before.colours, 'the same settings draw the same overlay');
});

test('paste an image', { timeout: 90_000 }, async () => {
  const drawn = nextDrawn(page);
  const net = await requestsDuring(async () => {
    await pasteFile(page, { name: 'bottle_good_000.jpg', type: 'image/jpeg', bytes: image('bottle_good_000.jpg') });
    const d = await drawn;
    assert.equal(d.name, 'bottle_good_000.jpg');
  });
  assert.deepEqual(net, { server: [], browser: [] }, 'pasting made network requests');
  assert.match(await page.textContent('#verdict'), /bottle_good_000\.jpg: score/);
});

test('pick an image with the file picker', { timeout: 90_000 }, async () => {
  const drawn = nextDrawn(page);
  const net = await requestsDuring(async () => {
    await page.setInputFiles('#image-files', join(IMAGES, 'bottle_contamination_000.jpg'));
    const d = await drawn;
    assert.equal(d.name, 'bottle_contamination_000.jpg');
  });
  assert.deepEqual(net, { server: [], browser: [] }, 'the picker made network requests');
});

test('custom prompt typed: the text encoder runs, and scoring uses it', { timeout: 90_000 }, async () => {
  await page.fill('#object', 'glass jar');
  await page.fill('#defects', 'crack, chipped rim');
  await page.evaluate(() => {
    window.__progressTexts = [];
    const el = document.getElementById('progress-text');
    new MutationObserver(() => window.__progressTexts.push(el.textContent)).observe(el, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
  await page.click('#encode');
  await page.waitForFunction(() => document.getElementById('text-status').dataset.encoded === 'glass jar', null, {
    timeout: 60_000,
  });
  assert.match(await page.textContent('#text-status'), /Encoded custom prompts for “glass jar” in \d+ ms/);
  const texts = await page.evaluate(() => window.__progressTexts);
  assert.ok(
    texts.some((t) => /encoding prompts with the text tower: \d+ of \d+/.test(t)),
    `text-encoding progress: ${JSON.stringify(texts)}`,
  );
  // The prompt file covers the bundled categories, so the text tower was not loaded with the
  // model: the custom prompt loads it (from the Cache API copy), with a progress bar.
  assert.ok(
    texts.some((t) => /^loading the text tower for custom prompts: [\d.]+ (B|kB|MB)/.test(t)),
    `text tower loading progress: ${JSON.stringify(texts)}`,
  );
  const withCustom = await dropAndWait(page, [bottle()]);
  await page.fill('#object', '');
  await page.fill('#defects', '');
  const withBundle = await dropAndWait(page, [bottle()]);
  assert.notEqual(withCustom.score, withBundle.score, 'custom prompts must change the score');
});

test('WinCLIP mode scores an image', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'winclip');
  assert.match(await page.textContent('#mode-note'), /heavy on the CPU/);
  const d = await dropAndWait(page, [bottle()]);
  assert.ok(Number.isFinite(d.score));
  await page.selectOption('#mode', 'fast');
});

test('few-shot: without references it says so; with one reference it scores', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'fewshot');
  assert.equal(await page.isVisible('#refs-box'), true);
  await dropFiles(page, '#drop', [bottle()]);
  await page.waitForFunction(() => !document.getElementById('message').hidden);
  assert.match(await message(page), /few-shot mode needs at least one normal reference image/);
  await dropFiles(page, '#refs-drop', [
    { name: 'bottle_train_good_000.jpg', type: 'image/jpeg', bytes: image('bottle_train_good_000.jpg') },
  ]);
  await page.waitForFunction(() => /1 normal reference image\(s\) embedded/.test(document.getElementById('refs-status').textContent));
  const net = await requestsDuring(async () => {
    const d = await dropAndWait(page, [bottle()]);
    assert.ok(Number.isFinite(d.score));
  });
  assert.deepEqual(net, { server: [], browser: [] }, 'few-shot scoring made network requests');
  assert.equal(await message(page), '');
  await page.selectOption('#mode', 'fast');
});

test('batch of 6 images: MuSc, a grid sorted by score, click opens one', { timeout: 90_000 }, async () => {
  await page.selectOption('#mode', 'batch');
  const names = readdirSync(IMAGES).filter((n) => n.endsWith('.jpg')).slice(0, 6);
  assert.equal(names.length, 6);
  const files = names.map((name) => ({ name, type: 'image/jpeg', bytes: image(name) }));
  const net = await requestsDuring(async () => {
    await dropAndWait(page, files);
  });
  assert.deepEqual(net, { server: [], browser: [] }, 'batch scoring made network requests');
  const items = await page.$$eval('#grid li button', (bs) => bs.map((x) => ({ score: Number(x.dataset.score), text: x.textContent })));
  assert.equal(items.length, 6);
  for (let i = 1; i < items.length; i += 1) assert.ok(items[i - 1].score >= items[i].score, 'grid not sorted by score');
  assert.equal(new Set(items.map((i) => i.text.split(':')[0])).size, 6);
  assert.match(await page.textContent('#image-status'), /Scored 6 images with MuSc/);
  // Open the least anomalous one.
  const drawn = nextDrawn(page);
  await page.locator('#grid li button').last().click();
  const d = await drawn;
  assert.equal(d.score, items[5].score);
  await page.selectOption('#mode', 'fast');
});

test('batch from a picked folder: only its images, sorted grid', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-folder-'));
  try {
    const names = readdirSync(IMAGES).filter((n) => n.endsWith('.jpg')).slice(2, 8);
    for (const n of names) copyFileSync(join(IMAGES, n), join(dir, n));
    writeFileSync(join(dir, 'notes.txt'), 'not an image');
    await page.selectOption('#mode', 'batch');
    const drawn = nextDrawn(page);
    await page.setInputFiles('#folder-files', dir);
    await drawn;
    const items = await page.$$eval('#grid li button', (bs) => bs.map((x) => Number(x.dataset.score)));
    assert.equal(items.length, 6);
    assert.deepEqual(items, [...items].sort((a, b) => b - a));
    assert.match(await page.textContent('#image-status'), /Scored 6 images with MuSc .* Left out 1 file\(s\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await page.selectOption('#mode', 'fast');
  }
});

test('export: overlay PNG and scores JSON', { timeout: 90_000 }, async () => {
  const [png] = await Promise.all([page.waitForEvent('download'), page.click('#export-png')]);
  assert.equal(png.suggestedFilename(), 'anoscope-overlay.png');
  const [json] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  const path = await json.path();
  const data = JSON.parse(readFileSync(path, 'utf8'));
  assert.equal(data.testModel, true);
  assert.equal(data.results.length, 6);
  assert.ok(data.results.every((r) => typeof r.score === 'number' && /^(normal|anomalous)$/.test(r.verdict)));
});

test('no CSP violations and no page errors on the main page', { timeout: 90_000 }, async () => {
  assert.deepEqual(await cspViolations(), []);
  assert.deepEqual(problems, []);
});
