// Photo-true results (issue 14, the page side) in headless Chromium with the interface test
// model: a non-square KolektorSDD strip (250×627) and a 16:9 picture keep their size and aspect,
// a planted map value (?plantmap=1) lands at the right photo pixel, the view toggle, the regions
// list against the JSON and CSV exports, tiled inspection (`auto` vs `off`, a planted map on the
// tiles, the stitched map against the native CLI's), touch (pinch zoom, one-finger pan), batch
// thumbnails, and the <anomaly-detector> element drawing the same view.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readSafetensors } from '../wasm/safetensors.mjs';
import { DIST, ROOT, browser, cli, dropAndWait, dropFiles, image, loadTestModel, makeSite, openPage, ready, serve } from './harness.mjs';

const STRIP = { name: 'ksdd_defect_134.png', type: 'image/png', bytes: readFileSync(join(ROOT, 'tests/images/ksdd_defect_134.png')) };

let server;
let b;
let plant; // the page with ?plantmap=1
let real; // the page as people get it
let inputSize;

before(async () => {
  server = await serve(makeSite());
  b = await browser();
  ({ page: plant } = await openPage(b.context, `${server.url}?plantmap=1`));
  await ready(plant);
  await loadTestModel(plant);
  inputSize = Number((await plant.textContent('#model-status')).match(/input (\d+) px/)[1]);
  ({ page: real } = await openPage(b.context, server.url));
  await ready(real);
  await loadTestModel(real);
});

after(async () => {
  await b?.close();
  server?.stop();
});

/** Sizes of the shown photo and layer, and [r, g, b] of the layer at photo pixels. */
function view(page, points = []) {
  return page.evaluate((points) => {
    const p = document.getElementById('photo');
    const o = document.getElementById('overlay');
    const ctx = o.getContext('2d');
    const px = points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
    const box = p.getBoundingClientRect();
    const obox = o.getBoundingClientRect();
    return {
      photo: [p.width, p.height],
      overlay: [o.width, o.height],
      shown: [box.width, box.height],
      layerShown: [obox.width, obox.height],
      px,
      opacity: getComputedStyle(o).opacity,
      bboxes: Array.from(document.querySelectorAll('#regions button'), (btn) => btn.dataset.bbox),
      note: document.getElementById('photo-note').textContent,
    };
  }, points);
}

const lum = ([r, g, bl]) => 0.299 * r + 0.587 * g + 0.114 * bl;

/** The photo pixel where the input cell (i, j) of an n-px map is centred (inverse resize). */
const cellCentre = (i, j, n, w, h) => [Math.round(((i + 0.5) * w) / n - 0.5), Math.round(((j + 0.5) * h) / n - 0.5)];

/** Drops a 640×360 (16:9) picture drawn in the page from a dataset photo. */
async function drop169(page) {
  const b64 = image('bottle_broken_large_001.jpg').toString('base64');
  const drawn = page.evaluate(
    () => new Promise((r) => document.addEventListener('anoscope:drawn', (e) => r({ ...e.detail, map: undefined }), { once: true })),
  );
  await page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bmp = await createImageBitmap(new Blob([bytes], { type: 'image/jpeg' }));
    const c = new OffscreenCanvas(640, 360);
    c.getContext('2d').drawImage(bmp, 0, 0, 640, 360);
    const blob = await c.convertToBlob({ type: 'image/png' });
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'bottle_16x9.png', { type: 'image/png' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, b64);
  return drawn;
}

/** Drops `file` and resolves to the drawn detail with the map on the photo (`photoMap`) as an array. */
function dropWithPhotoMap(page, file) {
  return page.evaluate(
    async ({ b64, name, type }) => {
      const drawn = new Promise((r) => document.addEventListener('anoscope:drawn', (e) => r(e.detail), { once: true }));
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      const e = await drawn;
      const pm = e.photoMap;
      return { ...e, map: undefined, photoMap: { width: pm.width, height: pm.height, map: Array.from(pm.map) } };
    },
    { b64: file.bytes.toString('base64'), name: file.name, type: file.type },
  );
}

test('the strip keeps its size and aspect, and a planted map cell lands on its photo pixel', { timeout: 120_000 }, async () => {
  const d = await dropAndWait(plant, [STRIP]);
  assert.deepEqual([d.photoWidth, d.photoHeight], [250, 627]);
  const n = inputSize;
  const hot = cellCentre(Math.floor((3 * n) / 4), Math.floor(n / 4), n, 250, 627);
  const cold = [10, 600];
  const v = await view(plant, [hot, cold]);
  assert.deepEqual(v.photo, [250, 627], 'the photo is drawn at its own resolution');
  assert.deepEqual(v.overlay, [250, 627], 'the heat layer is at the photo resolution');
  const ratio = v.shown[0] / v.shown[1];
  assert.ok(Math.abs(ratio - 250 / 627) < 0.01, `shown aspect ${ratio}`);
  assert.ok(Math.abs(v.layerShown[0] - v.shown[0]) < 1 && Math.abs(v.layerShown[1] - v.shown[1]) < 1, 'the layer covers the photo exactly');
  assert.ok(lum(v.px[0]) > 180, `hot pixel ${v.px[0]} at ${hot}`);
  assert.ok(lum(v.px[1]) < 30, `cold pixel ${v.px[1]}`);
  // One planted cell above 0.5: exactly one region, around that pixel.
  assert.equal(v.bboxes.length, 1, `regions ${v.bboxes}`);
  const [x, y, w, h] = v.bboxes[0].split(',').map(Number);
  assert.ok(x <= hot[0] && hot[0] < x + w && y <= hot[1] && hot[1] < y + h, `region ${v.bboxes[0]} misses ${hot}`);
  assert.ok(w < 250 / n * 2 + 2 && h < 627 / n * 2 + 2, `region ${v.bboxes[0]} is about one cell`);
  assert.match(await plant.textContent('#verdict'), /Largest region: #1 at x \d+, y \d+/);
  assert.match(v.note, /Photo 250×627 px, shown at its own size/);
  // The opacity slider works on the layer.
  await plant.fill('#opacity', '0.8');
  await plant.dispatchEvent('#opacity', 'input');
  assert.equal((await view(plant)).opacity, '0.8');
});

test('the view toggle: original hides the layer, side by side shows the photo twice', { timeout: 60_000 }, async () => {
  const shown = () =>
    plant.evaluate(() => ['overlay', 'boxes', 'photo-side'].map((id) => getComputedStyle(document.getElementById(id)).display !== 'none'));
  assert.deepEqual(await shown(), [true, true, false]);
  await plant.check('input[name="view"][value="original"]');
  assert.deepEqual(await shown(), [false, false, false]);
  await plant.check('input[name="view"][value="side"]');
  assert.deepEqual(await shown(), [true, true, true]);
  assert.deepEqual(await plant.evaluate(() => [document.getElementById('photo-side').width, document.getElementById('photo-side').height]), [250, 627]);
  await plant.check('input[name="view"][value="overlay"]');
  assert.deepEqual(await shown(), [true, true, false]);
});

test('zoom: 1:1, buttons, wheel and fit; dragging pans', { timeout: 60_000 }, async () => {
  const width = () => plant.evaluate(() => document.getElementById('photo').getBoundingClientRect().width);
  const fit = await width();
  assert.ok(fit > 250, `fit width ${fit} (the strip is scaled up to the view)`);
  await plant.click('#zoom-1');
  assert.ok(Math.abs((await width()) - 250) < 0.5, 'one photo pixel per screen pixel');
  assert.match(await plant.textContent('#zoom-value'), /^100 %$/);
  await plant.click('#zoom-in');
  assert.ok(Math.abs((await width()) - 312.5) < 0.5);
  await plant.click('#zoom-out');
  assert.ok(Math.abs((await width()) - 250) < 0.5);
  // Zoomed in 4×, the view scrolls: a drag pans it, the layer stays on the photo.
  for (let i = 0; i < 7; i++) await plant.click('#zoom-in');
  await plant.evaluate(() => document.querySelector('#result-view .views').scrollIntoView({ block: 'start' }));
  const box = await plant.locator('#result-view .views').boundingBox();
  const before = await plant.evaluate(() => [document.querySelector('#result-view .views').scrollLeft, document.querySelector('#result-view .views').scrollTop]);
  await plant.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await plant.mouse.down();
  await plant.mouse.move(box.x + box.width / 2 + 80, box.y + box.height / 2 + 120, { steps: 5 });
  await plant.mouse.up();
  const after = await plant.evaluate(() => [document.querySelector('#result-view .views').scrollLeft, document.querySelector('#result-view .views').scrollTop]);
  assert.ok(before[0] - after[0] > 40 && before[1] - after[1] > 60, `panned from ${before} to ${after}`);
  const v = await view(plant);
  assert.ok(Math.abs(v.layerShown[0] - v.shown[0]) < 1 && Math.abs(v.layerShown[1] - v.shown[1]) < 1, 'the layer zooms with the photo');
  // The wheel zooms (out, here).
  const w0 = await width();
  await plant.mouse.wheel(0, 300);
  await plant.waitForFunction((w0) => document.getElementById('photo').getBoundingClientRect().width < w0 - 1, w0);
  await plant.click('#zoom-fit');
  assert.ok(Math.abs((await width()) - fit) < 1, 'fit again');
});

test('touch: two fingers pinch-zoom about their midpoint, one finger pans', { timeout: 60_000 }, async () => {
  const cdp = await plant.context().newCDPSession(plant);
  await cdp.send('Emulation.setTouchEmulationEnabled', { enabled: true, maxTouchPoints: 5 });
  try {
    await plant.click('#zoom-fit');
    await plant.evaluate(() => document.querySelector('#result-view .views').scrollIntoView({ block: 'start' }));
    const box = await plant.locator('#result-view .views').boundingBox();
    const state = () =>
      plant.evaluate(() => {
        const v = document.querySelector('#result-view .views');
        return { w: document.getElementById('photo').getBoundingClientRect().width, left: v.scrollLeft, top: v.scrollTop };
      });
    const touch = (type, points) =>
      cdp.send('Input.dispatchTouchEvent', { type, touchPoints: points.map(([x, y], id) => ({ x, y, id })) });
    // Pinch out: the fingers move from 40 px to 160 px apart about a point in the view.
    const c = [box.x + Math.min(120, box.width / 2), box.y + Math.min(200, box.height / 2)];
    const s0 = await state();
    const at = [(s0.left + c[0] - box.x) / s0.w, (s0.top + c[1] - box.y) / s0.w]; // photo point under the fingers (in photo widths)
    await touch('touchStart', [[c[0] - 20, c[1]], [c[0] + 20, c[1]]]);
    for (let i = 1; i <= 6; i++) {
      const d = 20 + (60 * i) / 6;
      await touch('touchMove', [[c[0] - d, c[1]], [c[0] + d, c[1]]]);
    }
    await touch('touchEnd', []);
    const s1 = await state();
    assert.ok(Math.abs(s1.w / s0.w - 4) < 0.05, `pinch ×4: width ${s0.w} → ${s1.w}`);
    assert.match(await plant.textContent('#zoom-value'), /^\d+ %$/, 'no longer fit');
    // The photo point that was under the fingers is under them still.
    const now = [(s1.left + c[0] - box.x) / s1.w, (s1.top + c[1] - box.y) / s1.w];
    assert.ok(Math.abs(now[0] - at[0]) * s1.w < 2 && Math.abs(now[1] - at[1]) * s1.w < 2, `kept ${at} → ${now} (photo widths)`);
    // One finger drags the view: it scrolls by the drag, the zoom stays.
    await touch('touchStart', [c]);
    for (let i = 1; i <= 5; i++) await touch('touchMove', [[c[0] - 12 * i, c[1] - 16 * i]]);
    await touch('touchEnd', []);
    const s2 = await state();
    assert.ok(Math.abs(s2.w - s1.w) < 0.5, 'a one-finger drag does not zoom');
    assert.ok(Math.abs(s2.left - s1.left - 60) < 2 && Math.abs(s2.top - s1.top - 80) < 2, `panned ${s1.left},${s1.top} → ${s2.left},${s2.top}`);
    await plant.click('#zoom-fit');
  } finally {
    await cdp.send('Emulation.setTouchEmulationEnabled', { enabled: false });
    await cdp.detach();
  }
});

test('regions in the list equal those in the JSON and CSV exports; the threshold recomputes them', { timeout: 60_000 }, async () => {
  await plant.fill('#threshold', '0.2');
  await plant.dispatchEvent('#threshold', 'input');
  await plant.waitForFunction(() => /at threshold 0\.20/.test(document.getElementById('verdict').textContent));
  const low = (await view(plant)).bboxes;
  assert.equal(low.length, 1);
  await plant.fill('#threshold', '0.5');
  await plant.dispatchEvent('#threshold', 'input');
  await plant.waitForFunction(() => /at threshold 0\.50/.test(document.getElementById('verdict').textContent));
  const listed = (await view(plant)).bboxes;
  const [lw, lh] = low[0].split(',').slice(2).map(Number);
  const [w, h] = listed[0].split(',').slice(2).map(Number);
  assert.ok(lw * lh > w * h, `a lower threshold gives a larger region (${low} vs ${listed})`);
  const [json] = await Promise.all([plant.waitForEvent('download'), plant.click('#export-json')]);
  const data = JSON.parse(readFileSync(await json.path(), 'utf8'));
  const r = data.results[0];
  assert.deepEqual([r.width, r.height, r.regionsWidth, r.regionsHeight], [250, 627, 250, 627]);
  assert.deepEqual(r.regions.map((g) => g.bbox.join(',')), listed);
  assert.ok(r.regions[0].peak > 0.9 && r.regions[0].area_px > 0 && r.regions[0].area_pct > 0);
  const [csv] = await Promise.all([plant.waitForEvent('download'), plant.click('#export-csv')]);
  const lines = readFileSync(await csv.path(), 'utf8').trim().split('\n');
  assert.equal(lines[0], 'name,score,verdict,threshold,width,height,region,x,y,w,h,area_px,area_pct,peak,mean');
  assert.equal(lines.length, 2);
  const cells = lines[1].split(',');
  assert.equal(cells[0], 'ksdd_defect_134.png');
  assert.equal(Number(cells[1]), r.score);
  assert.deepEqual(cells.slice(7, 11).join(','), listed[0]);
});

test('a 16:9 picture keeps its size and aspect, the planted cell lands on it', { timeout: 120_000 }, async () => {
  const d = await drop169(plant);
  assert.deepEqual([d.photoWidth, d.photoHeight], [640, 360]);
  const n = inputSize;
  const hot = cellCentre(Math.floor((3 * n) / 4), Math.floor(n / 4), n, 640, 360);
  const v = await view(plant, [hot, [20, 340]]);
  assert.deepEqual(v.photo, [640, 360]);
  assert.deepEqual(v.overlay, [640, 360]);
  assert.ok(Math.abs(v.shown[0] / v.shown[1] - 16 / 9) < 0.01, `shown ${v.shown}`);
  assert.ok(lum(v.px[0]) > 180, `hot pixel ${v.px[0]} at ${hot}`);
  assert.ok(lum(v.px[1]) < 30, `cold pixel ${v.px[1]}`);
});

test('tiles: auto on the strip runs N tiles and says so; off is the whole-image score', { timeout: 180_000 }, async () => {
  await real.selectOption('#tiles', 'off');
  const off = await dropAndWait(real, [STRIP]);
  assert.equal(off.tiles, 0);
  await real.selectOption('#tiles', 'auto');
  const on = await dropAndWait(real, [STRIP]);
  assert.ok(on.tiles > 1, `${on.tiles} tiles`);
  assert.ok(on.score >= 0 && on.score <= 1, `score ${on.score}`);
  const v = await view(real);
  assert.deepEqual(v.photo, [250, 627]);
  assert.deepEqual(v.overlay, [250, 627]);
  assert.match(v.note, new RegExp(`Tiled inspection: ${on.tiles} tiles \\(\\d+×\\d+\\) and the whole photo, \\d+ ms`));
  const [json] = await Promise.all([real.waitForEvent('download'), real.click('#export-json')]);
  const r = JSON.parse(readFileSync(await json.path(), 'utf8')).results[0];
  assert.equal(r.tiles.count, on.tiles);
  // The whole-photo pass of a tiled run is today's untiled detection; the score combines it.
  assert.ok(Math.abs(r.tiles.wholeScore - off.score) < 1e-6, `${r.tiles.wholeScore} vs ${off.score}`);
  const want = 0.5 * (off.score + Math.max(...r.tiles.tileScores));
  assert.ok(Math.abs(on.score - want) < 1e-6, `${on.score} vs ${want}`);
  // The real map's regions are listed and outlined; the screenshot for the docs.
  await real.fill('#opacity', '0.6');
  await real.dispatchEvent('#opacity', 'input');
  const shot = await real.screenshot({ fullPage: true });
  const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'photo-strip-tiled.png'), shot);
  await real.selectOption('#tiles', 'off');
});

test('tiles: a planted map on the first and last tile lands on their photo pixels', { timeout: 120_000 }, async () => {
  await plant.selectOption('#tiles', 'auto');
  try {
    const d = await dropWithPhotoMap(plant, STRIP);
    assert.ok(d.tiles > 1, `${d.tiles} tiles`);
    assert.equal(d.tileRects.length, d.tiles);
    const n = inputSize;
    const first = d.tileRects[0];
    const last = d.tileRects[d.tiles - 1];
    assert.deepEqual([first.x, first.y], [0, 0]);
    assert.deepEqual([last.x + last.w, last.y + last.h], [250, 627], 'the last tile is flush with the far corner');
    // Cell (1, 1) of the first tile and (n−2, n−2) of the last, centred by the inverse resize.
    const at = (t, i, j) => [t.x + ((i + 0.5) * t.w) / n - 0.5, t.y + ((j + 0.5) * t.h) / n - 0.5];
    const hot = [at(first, 1, 1), at(last, n - 2, n - 2)];
    const { map, width, height } = d.photoMap;
    assert.deepEqual([width, height], [250, 627]);
    for (const [x, y] of hot) {
      // Bilinear between cells: exactly 1 at the centre, at least 1 − ½ / cell width half a pixel off.
      const v = map[Math.round(y) * width + Math.round(x)];
      assert.ok(v >= 1 - 0.5 / (first.w / n) - 1e-6, `stitched map ${v} at ${[x, y]}`);
    }
    const px = hot.map(([x, y]) => [Math.round(x), Math.round(y)]);
    const v = await view(plant, [...px, [125, 313]]);
    assert.deepEqual(v.overlay, [250, 627]);
    assert.ok(lum(v.px[0]) > 180 && lum(v.px[1]) > 180, `hot pixels ${v.px[0]} ${v.px[1]} at ${px}`);
    assert.ok(lum(v.px[2]) < 30, `cold pixel ${v.px[2]}`);
    // Two regions, one around each planted cell.
    assert.equal(v.bboxes.length, 2, `regions ${v.bboxes}`);
    for (const p of px) {
      assert.ok(
        v.bboxes.some((b) => {
          const [x, y, w, h] = b.split(',').map(Number);
          return x <= p[0] && p[0] < x + w && y <= p[1] && p[1] < y + h;
        }),
        `no region around ${p}: ${v.bboxes}`,
      );
    }
  } finally {
    await plant.selectOption('#tiles', 'off');
  }
});

test('tiles: the page and the native CLI give the same stitched map on the strip (≤ 1e-5)', { timeout: 180_000 }, async () => {
  const category = await real.inputValue('#category');
  await real.selectOption('#tiles', 'auto');
  const out = mkdtempSync(join(tmpdir(), 'anoscope-page-cli-'));
  try {
    const d = await dropWithPhotoMap(real, STRIP);
    // The same model and prompt file the page was served (the interface test model).
    cli(
      'detect',
      '--model', join(ROOT, 'tests/fixtures/hf_tiny'),
      '--prompts', join(DIST, 'models/test-tiny/prompts.safetensors'),
      '--category', category,
      '--mode', 'fast',
      '--backend', 'cpu',
      '--tiles', 'auto',
      '--full-map',
      '--out', out,
      join(ROOT, 'tests/images/ksdd_defect_134.png'),
    );
    const native = JSON.parse(readFileSync(join(out, 'ksdd_defect_134.json'), 'utf8'));
    const full = readSafetensors(readFileSync(join(out, 'ksdd_defect_134.map.safetensors'))).get('anomaly_map_full');
    assert.deepEqual(full.shape, [627, 250]);
    assert.deepEqual([d.photoMap.width, d.photoMap.height], [250, 627]);
    assert.ok(native.tiles.tiles.length > 1, 'the CLI tiled the strip');
    assert.deepEqual(d.tileRects, native.tiles.tiles, 'the same tile plan');
    let worst = 0;
    for (let i = 0; i < full.data.length; i++) worst = Math.max(worst, Math.abs(d.photoMap.map[i] - full.data[i]));
    console.log(`page vs CLI (tiles auto, ${native.tiles.tiles.length} tiles): stitched map max|Δ| = ${worst.toExponential(2)}, score ${d.score} vs ${native.score}`);
    assert.ok(worst <= 1e-5, `stitched map max|Δ| = ${worst}`);
    assert.ok(Math.abs(d.score - native.score) <= 1e-5, `score ${d.score} vs ${native.score}`);
  } finally {
    rmSync(out, { recursive: true, force: true });
    await real.selectOption('#tiles', 'off');
  }
});

test('the strip as the docs show it (interface test model), and a bottle photo', { timeout: 120_000 }, async () => {
  await real.selectOption('#tiles', 'off');
  await dropAndWait(real, [STRIP]);
  await real.fill('#opacity', '0.6');
  await real.dispatchEvent('#opacity', 'input');
  // The test model's map is nearly flat: a threshold just under its peak shows a few regions.
  // At threshold 0 the whole photo is one region, whose peak is the map's.
  await real.fill('#threshold', '0');
  await real.dispatchEvent('#threshold', 'input');
  const peak = Number((await real.textContent('#regions button')).match(/peak ([0-9.]+)/)[1]);
  const t = (Math.floor(peak * 100) - 1) / 100;
  await real.fill('#threshold', String(t));
  await real.dispatchEvent('#threshold', 'input');
  await real.waitForFunction((t) => document.getElementById('verdict').textContent.includes(`at threshold ${t.toFixed(2)}`), t);
  const count = Number(await real.getAttribute('#regions-box', 'data-count'));
  const listed = (await view(real)).bboxes.length;
  assert.equal(listed, Math.min(count, 50));
  assert.equal(await real.locator('#boxes rect').count(), listed);
  // Keyboard: the first region's button takes focus and highlights its box.
  if (listed) {
    await real.focus('#regions button');
    assert.equal(await real.locator('#boxes rect.hot').count(), 1);
  }
  assert.match(await real.textContent('#model-status'), /interface test model/);
  const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
  const shot = await real.screenshot({ fullPage: true });
  writeFileSync(join(dir, 'photo-strip.png'), shot);
  if (process.env.ANOSCOPE_UPDATE_SCREENSHOT === '1') writeFileSync(join(ROOT, 'docs', 'screenshot.png'), shot);
  await dropAndWait(real, [{ name: 'bottle_broken_large_000.png', type: 'image/png', bytes: image('bottle_broken_large_000.png') }]);
  writeFileSync(join(dir, 'photo-bottle.png'), await real.screenshot({ fullPage: true }));
});

test('cancel during a tiled run stops it between tiles', { timeout: 120_000 }, async () => {
  const { page } = await openPage(b.context, `${server.url}?stepdelay=250`);
  await ready(page);
  await loadTestModel(page);
  await page.selectOption('#tiles', 'auto');
  await dropFiles(page, '#drop', [STRIP]);
  await page.waitForFunction(() => /Tiled inspection: tile 2 of \d+/.test(document.getElementById('progress-text').textContent), null, { timeout: 60_000 });
  const at = await page.textContent('#progress-text');
  const total = Number(at.match(/pass \d+ of (\d+)/)[1]);
  assert.ok(total > 3, at);
  await page.click('#cancel');
  await page.waitForFunction(() => /^Stopped \(cancelled\)/.test(document.getElementById('image-status').textContent), null, { timeout: 30_000 });
  assert.equal(await page.textContent('#image-status'), 'Stopped (cancelled): scored 0 of 1 image (fast). Drop the rest again to score them.');
  const last = Number((await page.textContent('#progress-text')).match(/pass (\d+) of/)[1]);
  assert.ok(last < total, `stopped at pass ${last} of ${total}`);
  assert.equal(await page.textContent('#verdict'), 'No image scored yet.');
  await page.close();
});

test('a photo over 4096 px is shown as a bounded copy, and the page says so', { timeout: 120_000 }, async () => {
  const drawn = real.evaluate(
    () => new Promise((r) => document.addEventListener('anoscope:drawn', (e) => r({ ...e.detail, map: undefined }), { once: true })),
  );
  await real.evaluate(async () => {
    const c = new OffscreenCanvas(5000, 300);
    const ctx = c.getContext('2d');
    ctx.fillStyle = '#8a6';
    ctx.fillRect(0, 0, 5000, 300);
    ctx.fillStyle = '#222';
    ctx.fillRect(2400, 100, 60, 40);
    const blob = await c.convertToBlob({ type: 'image/png' });
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'wide_5000x300.png', { type: 'image/png' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  });
  const d = await drawn;
  assert.deepEqual([d.photoWidth, d.photoHeight], [5000, 300]);
  const v = await view(real);
  assert.deepEqual(v.photo, [4096, 246]);
  assert.deepEqual(v.overlay, [4096, 246]);
  assert.match(v.note, /Photo 5000×300 px, shown as a bounded copy of 4096×246 px \(long side at most 4096 px\)/);
});

test('batch: thumbnails at the photos\u2019 aspect, one CSV of every image', { timeout: 180_000 }, async () => {
  await real.selectOption('#mode', 'batch');
  try {
    const bottleFile = { name: 'bottle_good_000.jpg', type: 'image/jpeg', bytes: image('bottle_good_000.jpg') };
    await dropAndWait(real, [STRIP, bottleFile]);
    await real.waitForSelector('#grid-box:not([hidden])');
    // The thumbnails are drawn after the grid appears.
    await real.waitForFunction(() => Array.from(document.querySelectorAll('#grid canvas')).every((c) => c.dataset.thumb));
    const thumbs = await real.$$eval('#grid button', (bs) =>
      bs.map((btn) => {
        const c = btn.querySelector('canvas');
        const r = c.getBoundingClientRect();
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255;
        let hi = 0;
        for (let i = 0; i < px.length; i += 4) {
          const l = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
          lo = Math.min(lo, l);
          hi = Math.max(hi, l);
        }
        return { label: btn.textContent, aspect: r.width / r.height, size: [c.width, c.height], range: hi - lo };
      }),
    );
    const strip = thumbs.find((t) => t.label.startsWith('ksdd'));
    const bottle = thumbs.find((t) => t.label.startsWith('bottle'));
    // Drawn at the photo's aspect (long side 192 px), not a square stretched by CSS.
    assert.deepEqual(strip.size, [77, 192]);
    assert.deepEqual(bottle.size, [192, 192]);
    assert.ok(Math.abs(strip.aspect - 250 / 627) < 0.02, `strip thumbnail aspect ${strip.aspect}`);
    assert.ok(Math.abs(bottle.aspect - 1) < 0.02, `bottle thumbnail aspect ${bottle.aspect}`);
    assert.ok(strip.range > 40 && bottle.range > 40, `the photos show through: ${strip.range}, ${bottle.range}`);
    const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
    writeFileSync(join(dir, 'photo-batch.png'), await real.screenshot({ fullPage: true }));
    const [csv] = await Promise.all([real.waitForEvent('download'), real.click('#export-csv')]);
    const lines = readFileSync(await csv.path(), 'utf8').trim().split('\n').slice(1);
    const names = new Set(lines.map((l) => l.split(',')[0]));
    assert.deepEqual([...names].sort(), ['bottle_good_000.jpg', 'ksdd_defect_134.png']);
    const strips = lines.filter((l) => l.startsWith('ksdd')).map((l) => l.split(','));
    assert.deepEqual(strips[0].slice(4, 6), ['250', '627']);
  } finally {
    await real.selectOption('#mode', 'fast');
  }
});

test('<anomaly-detector> draws the same view: the photo at its size and aspect, layer, zoom, regions', { timeout: 120_000 }, async () => {
  const { page, problems, cspViolations } = await openPage(b.context, `${server.url}examples/embed.html`);
  try {
    // The example scores its own sample first; then the strip, at a threshold just under the map's peak.
    await page.waitForFunction(() => document.body.dataset.score, null, { timeout: 60_000 });
    const b64 = STRIP.bytes.toString('base64');
    const detect = () =>
      page.evaluate(async (b64) => {
        const el = document.getElementById('detector');
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const d = await el.detect(new File([bytes], 'ksdd_defect_134.png', { type: 'image/png' }));
        return { ...d, map: Array.from(d.map) };
      }, b64);
    const first = await detect();
    assert.deepEqual([first.photoWidth, first.photoHeight], [250, 627]);
    const peak = Math.max(...first.map);
    await page.evaluate((t) => document.getElementById('detector').setAttribute('threshold', String(t)), Math.floor((peak - 0.005) * 1000) / 1000);
    const d = await detect();
    assert.deepEqual([d.regionsWidth, d.regionsHeight], [250, 627]);
    assert.ok(d.regions.length >= 1, `regions at ${d.threshold}: ${d.regions.length}`);
    const shadow = () =>
      page.evaluate(() => {
        const root = document.getElementById('detector').shadowRoot;
        const $ = (id) => root.getElementById(id);
        const box = $('photo').getBoundingClientRect();
        const obox = $('overlay').getBoundingClientRect();
        return {
          photo: [$('photo').width, $('photo').height],
          overlay: [$('overlay').width, $('overlay').height],
          shown: [box.width, box.height],
          layerShown: [obox.width, obox.height],
          opacity: getComputedStyle($('overlay')).opacity,
          bboxes: Array.from(root.querySelectorAll('#regions button'), (b) => b.dataset.bbox),
          rects: root.querySelectorAll('#boxes rect').length,
          status: root.querySelector('[part="status"]').textContent,
        };
      });
    const v = await shadow();
    assert.deepEqual(v.photo, [250, 627], 'the photo at its own resolution');
    assert.deepEqual(v.overlay, [250, 627], 'the heat layer at the photo resolution');
    assert.ok(Math.abs(v.shown[0] / v.shown[1] - 250 / 627) < 0.01, `shown ${v.shown}`);
    assert.ok(Math.abs(v.layerShown[0] - v.shown[0]) < 1 && Math.abs(v.layerShown[1] - v.shown[1]) < 1, 'the layer covers the photo');
    assert.equal(v.opacity, '0.5');
    assert.deepEqual(v.bboxes, d.regions.slice(0, 50).map((g) => g.bbox.join(',')), 'the list is the event’s regions');
    assert.equal(v.rects, v.bboxes.length);
    assert.match(v.status, new RegExp(`^Anomaly score ${d.score.toFixed(3)}: \\w+ at threshold [0-9.]+; ${d.regions.length} regions? at or above it\\.$`));
    // Zoom (button, 1:1), opacity and the view toggle work inside the element.
    const click = (id) => page.evaluate((id) => document.getElementById('detector').shadowRoot.getElementById(id).click(), id);
    await click('zoom-1');
    assert.ok(Math.abs((await shadow()).shown[0] - 250) < 0.5);
    await click('zoom-in');
    assert.ok(Math.abs((await shadow()).shown[0] - 312.5) < 0.5);
    await click('zoom-fit');
    await page.evaluate(() => {
      const root = document.getElementById('detector').shadowRoot;
      const o = root.getElementById('opacity');
      o.value = '0.7';
      o.dispatchEvent(new Event('input'));
      root.querySelector('input[value="side"]').click();
    });
    const side = await page.evaluate(() => {
      const root = document.getElementById('detector').shadowRoot;
      return [getComputedStyle(root.getElementById('overlay')).opacity, getComputedStyle(root.getElementById('photo-side')).display];
    });
    assert.deepEqual(side, ['0.7', 'block']);
    await page.evaluate(() => document.getElementById('detector').shadowRoot.querySelector('input[value="overlay"]').click());
    const dir = join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'browser');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'element-strip.png'), await page.screenshot({ fullPage: true }));
    assert.deepEqual(await cspViolations(), []);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});
