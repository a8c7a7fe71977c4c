// Time from drop to heatmap drawn in headless Chromium, for one checkpoint folder.
//   node tests/browser/bench.mjs MODEL_DIR [--runs N] [--mode fast|winclip] [--image FILE]
//                                [--backend auto|gpu|cpu] [--threads N] [--webcam SECONDS]
// --webcam S: instead of drops, runs the webcam (Chromium's fake camera) in fast mode and reports
// the frames scored per second over S seconds after two warm-up frames (frames the worker is too
// busy for are dropped, so this is the rate the worker sustains).
// --backend is the page's ?backend= (gpu forces WebGPU, SwiftShader included: Chromium runs with
// harness.mjs's CHROMIUM_FLAGS, --enable-unsafe-webgpu among them); --threads its ?threads=.
// MODEL_DIR holds config.json + model.safetensors (Hugging Face layout) or the open_clip pair.
// The site (www/dist, built) is copied, the checkpoint is served with it as model "bench",
// one warm-up drop encodes the prompts, then N drops are timed; prints the median.
import { execFileSync } from 'node:child_process';
import { existsSync, linkSync, copyFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ROOT, browser, dropAndWait, image, makeSite, openPage, ready, serve, waitLoaded } from './harness.mjs';

const args = process.argv.slice(2);
const dir = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
if (!dir) {
  console.error(
    'usage: node tests/browser/bench.mjs MODEL_DIR [--runs N] [--mode fast|winclip] [--image FILE] [--backend auto|gpu|cpu] [--threads N]',
  );
  process.exit(2);
}
const runs = Number(opt('runs', 5));
const mode = opt('mode', 'fast');
const imgName = opt('image', 'bottle_broken_large_000.png');
const backend = opt('backend', 'auto');
if (!['auto', 'gpu', 'cpu'].includes(backend)) throw new Error(`--backend ${backend}: expected auto, gpu or cpu`);
const threads = opt('threads', '');
const webcamSeconds = Number(opt('webcam', 0));

const site = makeSite();
mkdirSync(join(site, 'models', 'bench'), { recursive: true });
let n = 0;
for (const f of ['config.json', 'model.safetensors', 'open_clip_config.json', 'open_clip_model.safetensors', 'prompts.safetensors']) {
  if (!existsSync(join(dir, f))) continue;
  try {
    linkSync(join(dir, f), join(site, 'models', 'bench', f));
  } catch {
    copyFileSync(join(dir, f), join(site, 'models', 'bench', f));
  }
  n += 1;
}
if (n < 2) throw new Error(`${dir} holds no checkpoint`);
execFileSync('node', [join(ROOT, 'tests', 'browser', 'site-index.mjs'), site], { stdio: 'inherit' });

const server = await serve(site);
const b = await browser({ fakeMedia: webcamSeconds > 0 });
try {
  const query = `?model=bench&backend=${backend}${threads ? `&threads=${threads}` : ''}`;
  const { page } = await openPage(b.context, `${server.url}${query}`);
  await ready(page);
  await waitLoaded(page, '', { timeout: 600_000 });
  console.log(await page.textContent('#model-status'));
  const backendText = await page.textContent('#backend');
  console.log(`backend: ${backendText}`);
  if (webcamSeconds > 0) {
    const frames = () => page.evaluate(() => Number(document.getElementById('webcam-status').dataset.frames || 0));
    await page.click('#webcam');
    await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 2, null, { timeout: 600_000 });
    const f0 = await frames();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, webcamSeconds * 1000));
    const f1 = await frames();
    const fps = (f1 - f0) / ((Date.now() - t0) / 1000);
    await page.click('#webcam');
    console.log(JSON.stringify({ model: dir, webcam: true, backend: backendText, seconds: webcamSeconds, frames: f1 - f0, fps: Number(fps.toFixed(2)) }));
  } else {
    await page.selectOption('#mode', mode);
    const file = { name: basename(imgName), type: imgName.endsWith('.png') ? 'image/png' : 'image/jpeg', bytes: image(imgName) };
    const warm = await dropAndWait(page, [file]);
    console.log(`warm-up (includes encoding the prompts when no prompt file is served): ${warm.ms.toFixed(0)} ms`);
    const times = [];
    for (let i = 0; i < runs; i += 1) {
      const d = await dropAndWait(page, [file]);
      times.push(d.ms);
    }
    times.sort((a, c) => a - c);
    const median = times[Math.floor(times.length / 2)];
    const ua = await page.evaluate(() => navigator.userAgent);
    if (backend === 'gpu' && !/^GPU/.test(await page.textContent('#backend'))) {
      console.log(`warning: the GPU was not used to the end: ${await page.textContent('#backend')}`);
    }
    console.log(JSON.stringify({ model: dir, mode, backend: backendText, runs, median_ms: Math.round(median), min_ms: Math.round(times[0]), max_ms: Math.round(times.at(-1)), browser: ua }));
  }
} finally {
  await b.close();
  server.stop();
}
