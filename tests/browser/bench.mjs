// Time from drop to heatmap drawn in headless Chromium, for one checkpoint folder.
//   node tests/browser/bench.mjs MODEL_DIR [--runs N] [--mode fast|winclip|anomalyclip|adaptclip]
//                                [--image FILE] [--backend auto|gpu|cpu] [--threads N] [--webcam SECONDS]
//                                [--learned FILE] [--size N] [--batch N] [--cancel-after SECONDS]
//                                [--relaxed auto|off]
// --relaxed off: the SIMD128 build even where relaxed SIMD is supported (?relaxedprobe=fail).
// --learned FILE: a converted learned file (`anoscope convert --learned`), served as the model's
// learned.safetensors (with learned.json {"imageSize": N} from --size N; default the page's 518),
// for --mode anomalyclip|adaptclip. A learned.safetensors / learned.json in MODEL_DIR is served too.
// --batch N: after the timed drops, N copies of the image dropped at once (scored one after the
// other, as the page scores a multi-file drop); prints each image's time (drawn to drawn).
// --cancel-after S: last, one more drop, Cancel clicked S seconds into it; prints how long the
// page took to say "Stopped (cancelled)".
// The worker's WebAssembly memory size (`WebAssembly.Memory.buffer.byteLength`, reported with
// every result: memory never shrinks, so this is the high-water mark) is printed after the load
// and after each stage.
// --webcam S: instead of drops, runs the webcam (Chromium's fake camera) in fast mode and reports
// the frames scored per second over S seconds after two warm-up frames (frames the worker is too
// busy for are dropped, so this is the rate the worker sustains).
// --backend is the page's ?backend= (gpu forces WebGPU, SwiftShader included: Chromium runs with
// harness.mjs's CHROMIUM_FLAGS, --enable-unsafe-webgpu among them); --threads its ?threads=.
// MODEL_DIR holds config.json + model.safetensors (Hugging Face layout) or the open_clip pair.
// The site (www/dist, built) is copied, the checkpoint is served with it as model "bench",
// one warm-up drop encodes the prompts, then N drops are timed; prints the median.
import { execFileSync } from 'node:child_process';
import { existsSync, linkSync, copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ROOT, browser, dropAndWait, dropFiles, image, makeSite, openPage, ready, serve, waitLoaded } from './harness.mjs';

const args = process.argv.slice(2);
const dir = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
if (!dir) {
  console.error(
    'usage: node tests/browser/bench.mjs MODEL_DIR [--runs N] [--mode fast|winclip|anomalyclip|adaptclip] [--image FILE] [--backend auto|gpu|cpu] [--threads N] [--learned FILE] [--size N] [--batch N] [--cancel-after SECONDS] [--relaxed auto|off]',
  );
  process.exit(2);
}
const runs = Number(opt('runs', 5));
const mode = opt('mode', 'fast');
const imgName = opt('image', 'bottle_broken_large_000.png');
const backend = opt('backend', 'auto');
if (!['auto', 'gpu', 'cpu'].includes(backend)) throw new Error(`--backend ${backend}: expected auto, gpu or cpu`);
const threads = opt('threads', '');
const relaxed = opt('relaxed', 'auto'); // off: the SIMD128 build (?relaxedprobe=fail), auto: the page's choice
if (!['auto', 'off'].includes(relaxed)) throw new Error(`--relaxed ${relaxed}: expected auto or off`);
const webcamSeconds = Number(opt('webcam', 0));
const learned = opt('learned', '');
const size = opt('size', '');
const batch = Number(opt('batch', 0));
const cancelAfter = Number(opt('cancel-after', 0));

const site = makeSite();
mkdirSync(join(site, 'models', 'bench'), { recursive: true });
let n = 0;
for (const f of ['config.json', 'model.safetensors', 'open_clip_config.json', 'open_clip_model.safetensors', 'prompts.safetensors', 'learned.safetensors', 'learned.json']) {
  if (!existsSync(join(dir, f))) continue;
  try {
    linkSync(join(dir, f), join(site, 'models', 'bench', f));
  } catch {
    copyFileSync(join(dir, f), join(site, 'models', 'bench', f));
  }
  n += 1;
}
if (n < 2) throw new Error(`${dir} holds no checkpoint`);
if (learned) {
  rmSync(join(site, 'models', 'bench', 'learned.safetensors'), { force: true });
  try {
    linkSync(learned, join(site, 'models', 'bench', 'learned.safetensors'));
  } catch {
    copyFileSync(learned, join(site, 'models', 'bench', 'learned.safetensors'));
  }
}
if (size) writeFileSync(join(site, 'models', 'bench', 'learned.json'), JSON.stringify({ imageSize: Number(size) }));
execFileSync('node', [join(ROOT, 'tests', 'browser', 'site-index.mjs'), site], { stdio: 'inherit' });

const server = await serve(site);
const b = await browser({ fakeMedia: webcamSeconds > 0 });
try {
  const query = `?model=bench&backend=${backend}${threads ? `&threads=${threads}` : ''}${relaxed === 'off' ? '&relaxedprobe=fail' : ''}`;
  const { page } = await openPage(b.context, `${server.url}${query}`);
  await ready(page);
  await waitLoaded(page, '', { timeout: 600_000 });
  console.log(await page.textContent('#model-status'));
  const backendText = await page.textContent('#backend');
  const engine = await page.evaluate(() => ({ ...document.getElementById('backend').dataset }));
  console.log(`backend: ${backendText} (${JSON.stringify(engine)})`);
  const MiB = 1024 * 1024;
  const memory = async (when) => {
    const bytes = Number(await page.evaluate(() => document.body.dataset.wasmMemory || 0));
    console.log(`wasm memory ${when}: ${(bytes / MiB).toFixed(0)} MiB`);
    return bytes;
  };
  await memory('after the load');
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
    await memory('after the warm-up drop');
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
    const summary = { model: dir, mode, backend: backendText, threads: engine.threads, relaxed: engine.relaxed, runs };
    if (runs > 0) Object.assign(summary, { median_ms: Math.round(median), min_ms: Math.round(times[0]), max_ms: Math.round(times.at(-1)) });
    if (runs > 0) summary.memory_after_runs_mib = Math.round((await memory(`after ${runs} drops`)) / MiB);
    if (batch > 0) {
      // Every drawn result's time, from the drop to the last image scored.
      const stamps = page.evaluate(
        (count) =>
          new Promise((resolve) => {
            const t0 = performance.now();
            const at = [];
            const on = () => {
              at.push(performance.now() - t0);
              if (at.length === count) {
                document.removeEventListener('anoscope:drawn', on);
                resolve(at);
              }
            };
            document.addEventListener('anoscope:drawn', on);
          }),
        batch,
      );
      await dropFiles(page, '#drop', Array.from({ length: batch }, (_, i) => ({ ...file, name: `${i}-${file.name}` })));
      const at = await stamps;
      await page.waitForFunction((count) => document.getElementById('image-status').textContent.startsWith(`Scored ${count} of ${count}`), batch, { timeout: 600_000 });
      const each = at.map((t, i) => Math.round(t - (i ? at[i - 1] : 0)));
      console.log(`batch of ${batch}: ${JSON.stringify(each)} ms per image (drop to drawn, drawn to drawn)`);
      Object.assign(summary, { batch, batch_ms: each, memory_after_batch_mib: Math.round((await memory(`after the batch of ${batch}`)) / MiB) });
    }
    if (cancelAfter > 0) {
      await dropFiles(page, '#drop', [file]);
      await page.waitForSelector('#cancel:not([hidden])');
      await new Promise((r) => setTimeout(r, cancelAfter * 1000));
      const t0 = Date.now();
      await page.click('#cancel');
      await page.waitForFunction(() => /^Stopped \(cancelled\)/.test(document.getElementById('image-status').textContent), null, { timeout: 600_000 });
      const status = await page.textContent('#image-status');
      summary.cancel_ms = Date.now() - t0;
      console.log(`cancel ${cancelAfter} s into an image: "${status}" after ${summary.cancel_ms} ms`);
    }
    summary.browser = ua;
    console.log(JSON.stringify(summary));
  }
} finally {
  await b.close();
  server.stop();
}
