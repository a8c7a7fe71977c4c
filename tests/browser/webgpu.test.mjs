// The image tower on WebGPU in headless Chromium. Chromium 148 (Debian) exposes WebGPU only with
// --enable-unsafe-webgpu (in harness.mjs's CHROMIUM_FLAGS), on its CPU SwiftShader adapter (no
// shader-f16): ?backend=gpu forces it, ?backend=auto (the default) leaves it alone. With the
// interface test model, forced WebGPU must score like the CPU path (scores and anomaly maps
// within 1e-3 in fast, WinCLIP, few-shot and batch mode), and the test hook ?gpufail=adapter|forward
// must fall back to the CPU with a visible message and a correct result.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { browser, dropAndWait, dropFiles, image, loadTestModel, message, openPage, ready, serve, makeSite } from './harness.mjs';

let server;
let b;
let webgpu = null; // the adapter Chromium offers, or null

before(async () => {
  server = await serve(makeSite());
  b = await browser();
  const { page } = await openPage(b.context, server.url);
  webgpu = await page.evaluate(async () => {
    const a = await navigator.gpu?.requestAdapter();
    return a ? { vendor: a.info.vendor, architecture: a.info.architecture, description: a.info.description } : null;
  });
  await page.close();
});

after(async () => {
  await b?.close();
  server?.stop();
});

const required = process.env.ANOSCOPE_REQUIRE_WEBGPU === '1';
/** Skips `t` (true) when Chromium offers no WebGPU adapter (known only once `before` ran). */
const noGpu = (t) => {
  if (webgpu) return false;
  if (required) throw new Error('ANOSCOPE_REQUIRE_WEBGPU=1 but Chromium offers no WebGPU adapter');
  t.skip('Chromium offers no WebGPU adapter here (it needs --enable-unsafe-webgpu)');
  return true;
};

const bottle = () => ({ name: 'bottle_broken_large_000.png', type: 'image/png', bytes: image('bottle_broken_large_000.png') });
const jpg = (name) => ({ name, type: 'image/jpeg', bytes: image(name) });
const BATCH = ['bottle_broken_large_001.jpg', 'bottle_broken_small_000.jpg', 'bottle_contamination_000.jpg', 'bottle_good_000.jpg'];

async function backendOf(page) {
  return page.$eval('#backend', (el) => ({ text: el.textContent, gpu: el.dataset.gpu === 'true' }));
}

/** Opens the page with `query`, loads the test model, and scores the bottle in each mode. */
async function scoreAll(query) {
  const { page, problems, cspViolations } = await openPage(b.context, `${server.url}${query}`);
  try {
    await ready(page);
    await loadTestModel(page);
    const out = { backend: await backendOf(page) };
    for (const mode of ['fast', 'winclip']) {
      await page.selectOption('#mode', mode);
      out[mode] = await dropAndWait(page, [bottle()]);
    }
    await page.selectOption('#mode', 'fewshot');
    await dropFiles(page, '#refs-drop', [jpg('bottle_train_good_000.jpg')]);
    await page.waitForFunction(() => /1 normal reference image\(s\) embedded/.test(document.getElementById('refs-status').textContent));
    out.fewshot = await dropAndWait(page, [bottle()]);
    await page.selectOption('#mode', 'batch');
    out.batch = await dropAndWait(page, BATCH.map(jpg));
    out.batchScores = await page.$$eval('#grid li button', (bs) =>
      Object.fromEntries(bs.map((x) => [x.textContent.split(':')[0], Number(x.dataset.score)])),
    );
    out.backendAfter = await backendOf(page);
    out.message = await message(page);
    assert.deepEqual(problems, []);
    assert.deepEqual(await cspViolations(), []);
    return out;
  } finally {
    await page.close();
  }
}

function maxDiff(a, b) {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i += 1) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** max|Δ| of scores and maps between two runs, per mode. */
function compare(x, y) {
  const out = {};
  for (const mode of ['fast', 'winclip', 'fewshot', 'batch']) {
    assert.ok(x[mode].map?.length > 0, `${mode}: no map in the drawn event`);
    out[mode] = { score: Math.abs(x[mode].score - y[mode].score), map: maxDiff(x[mode].map, y[mode].map) };
  }
  out.batchScores = Math.max(...Object.keys(x.batchScores).map((k) => Math.abs(x.batchScores[k] - y.batchScores[k])));
  return out;
}

let cpu = null;
async function cpuRun() {
  cpu ??= await scoreAll('?backend=cpu&threads=1');
  return cpu;
}

test('auto on a software WebGPU adapter (SwiftShader) runs on the CPU', { timeout: 60_000 }, async (t) => {
  if (noGpu(t)) return;
  const { page } = await openPage(b.context, `${server.url}?threads=1`);
  try {
    await ready(page);
    const backend = await backendOf(page);
    assert.equal(backend.gpu, false);
    assert.match(backend.text, /^CPU \(WebAssembly SIMD( \+ relaxed)?, 1 thread\) \(the only WebGPU adapter, .+, runs on the CPU; \?backend=gpu forces it\)$/);
    assert.equal(await page.$eval('#backend-choice', (el) => el.value), 'auto');
    assert.equal(await message(page), '');
  } finally {
    await page.close();
  }
});

test('forced WebGPU (?backend=gpu) scores like the CPU: fast, WinCLIP, few-shot, batch', { timeout: 300_000 }, async (t) => {
  if (noGpu(t)) return;
  const gpu = await scoreAll('?backend=gpu');
  const ref = await cpuRun();
  assert.equal(ref.backend.gpu, false);
  assert.match(ref.backend.text, /^CPU \(WebAssembly SIMD( \+ relaxed)?, 1 thread\)/);
  assert.equal(gpu.backend.gpu, true, gpu.backend.text);
  assert.match(gpu.backend.text, /^GPU \(WebGPU, .+, f(16|32) weights\)$/);
  assert.equal(gpu.backendAfter.gpu, true, `the GPU was switched off: ${gpu.backendAfter.text}`);
  assert.equal(gpu.message, '');
  const d = compare(gpu, ref);
  console.log(`# WebGPU (${JSON.stringify(webgpu)}) vs CPU, max |Δ|: ${JSON.stringify(d)}`);
  for (const [mode, v] of Object.entries(d)) {
    if (typeof v === 'number') assert.ok(v <= 1e-3, `${mode}: scores differ by ${v}`);
    else assert.ok(v.score <= 1e-3 && v.map <= 1e-3, `${mode}: score Δ ${v.score}, map Δ ${v.map}`);
  }
});

for (const hook of ['adapter', 'forward']) {
  test(`a GPU failure (?gpufail=${hook}) falls back to the CPU with a message and the CPU's results`, { timeout: 300_000 }, async (t) => {
    if (noGpu(t)) return;
    const failed = await scoreAll(`?backend=gpu&gpufail=${hook}`);
    const ref = await cpuRun();
    assert.equal(failed.backendAfter.gpu, false);
    const why = hook === 'adapter' ? /WebGPU could not start \(no GPU adapter \(forced/ : /WebGPU failed \(GPU device lost \(forced/;
    assert.match(failed.backendAfter.text, /^CPU \(WebAssembly SIMD( \+ relaxed)?, 1 thread\)/);
    assert.match(failed.backendAfter.text, why);
    if (hook === 'adapter') assert.equal(failed.backend.gpu, false);
    const d = compare(failed, ref);
    console.log(`# ?gpufail=${hook} vs CPU, max |Δ|: ${JSON.stringify(d)}`);
    for (const [mode, v] of Object.entries(d)) {
      if (typeof v === 'number') assert.equal(v, 0, `${mode}: scores differ by ${v}`);
      else assert.ok(v.score === 0 && v.map === 0, `${mode}: score Δ ${v.score}, map Δ ${v.map}`);
    }
  });
}

test('the failure message is shown when it happens', { timeout: 120_000 }, async (t) => {
  if (noGpu(t)) return;
  const { page, problems } = await openPage(b.context, `${server.url}?backend=gpu&gpufail=forward`);
  try {
    await ready(page);
    await loadTestModel(page);
    assert.equal((await backendOf(page)).gpu, true);
    const d = await dropAndWait(page, [bottle()]);
    assert.ok(Number.isFinite(d.score));
    assert.match(await message(page), /WebGPU failed \(GPU device lost \(forced.*\)\)\. Running on the CPU \(WebAssembly\) instead\./s);
    assert.match(await page.textContent('#image-status'), /Scored 1 of 1 image/);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
  }
});
