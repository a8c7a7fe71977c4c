// One benchmark block in the page: ?peer=ours|oursq8|base|baseq8|ort|ortq8&threads=N&runs=R
// &warmup=W&size=S[&variant=simd|relaxed|relaxed-dot|simd128-dot] (our module: the SIMD128 build or
// the relaxed-SIMD one; relaxed-dot and simd128-dot: the latter with that int8 dot product forced;
// base, baseq8: ours from another build, served under /base/, browser_bench.mjs --baseline).
// The result (or an error) is stored in window.__bench for tests/bench/browser_bench.mjs.
const q = new URLSearchParams(location.search);
const peer = q.get('peer');
const threads = Number(q.get('threads') || 1);
// `pool=1`: our threaded build even at one thread (a pool of one worker), to tell the threaded
// build's own cost from what a second thread buys.
const pool = q.get('pool') === '1';
const runs = Number(q.get('runs') || 5);
const warmup = Number(q.get('warmup') || 2);
const size = Number(q.get('size') || 224);
// `image` (the image tower) or `text` (one prompt through the text tower, tokenizer included).
const task = q.get('task') || 'image';
// CLIP Surgery layers for our image pass (fast mode uses half the tower); 0 = plain encode.
const surgery = Number(q.get('surgery') || 0);
// How our peer loads the checkpoint: `whole` (the file's bytes handed over at once, as the page
// did before) or `stream` (ClipLoader fed with the fetch body's chunks, as the page does now: only
// the towers the task needs, the image tower usable as soon as its bytes are in).
const load = q.get('load') || 'whole';
const variant = q.get('variant') || 'simd';
// Ours (this build or the baseline one) or onnxruntime-web.
const ours = ['ours', 'oursq8', 'base', 'baseq8'].includes(peer);
// Our f32 checkpoint (/model/) or our q8 one (/model-q8/, anoscope convert --dtype q8).
const modelDir = ours && peer.endsWith('q8') ? '/model-q8' : '/model';
const t0 = performance.now();
let readyMs = null;
let wasmMemory = null;
let int8Dot = null; // the int8 dot product our module runs
const PROMPT = 'a photo of a damaged bottle.';

/** The same deterministic pixels for both peers (xorshift32 → roughly N(0,1) via 4 uniforms). */
function pixels() {
  const out = new Float32Array(3 * size * size);
  let s = 0x9e3779b9;
  const u = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  for (let i = 0; i < out.length; i++) out[i] = (u() + u() + u() + u() - 2) * 1.7320508;
  return out;
}

/** Reads one F32 tensor out of safetensors bytes. */
function tensor(bytes, name) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const [a, b] = header[name].data_offsets;
  return new Float32Array(bytes.slice(8 + n + a, 8 + n + b).buffer);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function bytesOf(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function makeOurs() {
  // One thread: the default build; more: the threaded build (wasm atomics + a rayon pool of
  // Web Workers, needs cross-origin isolation).
  const dir =
    (peer.startsWith('base') ? '/base' : '') + (threads === 1 && !pool ? '/pkg' : '/pkg-threads') + (variant === 'simd' ? '' : '-relaxed');
  const pkg = await import(`${dir}/anoscope.js`);
  wasmMemory = (await pkg.default()).memory;
  if (variant.endsWith('-dot')) pkg.setInt8Dot(variant.slice(0, -4));
  int8Dot = pkg.int8Dot?.() ?? null;
  if (threads > 1 || pool) await pkg.initThreadPool(threads);
  const running = pkg.threads?.() ?? 1;
  if (running !== threads) throw new Error(`asked for ${threads} threads, the module runs ${running}`);
  const { ClipModel, ClipLoader } = pkg;
  const config = await (await fetch(`${modelDir}/config.json`)).text();
  let model;
  if (load === 'stream') {
    const res = await fetch(`${modelDir}/model.safetensors`);
    if (!res.ok) throw new Error(`model.safetensors: HTTP ${res.status}`);
    const total = Number(res.headers.get('content-length')) || undefined;
    const loader = new ClipLoader('config.json', config, 'model.safetensors', total, true, task === 'text');
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      loader.push(value);
      if (!model && loader.visionReady()) {
        model = loader.takeModel();
        readyMs = performance.now() - t0;
      }
    }
    loader.finish();
    if (task === 'text') loader.attachText(model);
    loader.free();
  } else {
    model = ClipModel.load('config.json', config, await bytesOf(`${modelDir}/model.safetensors`));
    readyMs = performance.now() - t0;
  }
  if (task === 'text') return () => tensor(model.embedText([PROMPT]), 'text_embeds');
  return (x) => tensor(model.embedImage(x, size, size, surgery), 'image_embeds');
}

async function makeOrt() {
  if (task !== 'image') throw new Error('the onnxruntime-web peer runs the image tower only');
  const ort = await import('/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  const session = await ort.InferenceSession.create(peer === 'ortq8' ? '/onnx/model_q8.onnx' : '/onnx/model.onnx', {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  return async (x) => {
    const out = await session.run({ pixel_values: new ort.Tensor('float32', x, [1, 3, size, size]) });
    return out.image_embeds.data;
  };
}

async function main() {
  const run = ours ? await makeOurs() : peer === 'ort' || peer === 'ortq8' ? await makeOrt() : null;
  if (!run) throw new Error(`unknown peer ${peer}`);
  const loadMs = performance.now() - t0;
  const x = pixels();
  let embeds = null;
  for (let i = 0; i < warmup; i++) embeds = await run(x);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    embeds = await run(x);
    times.push(performance.now() - t);
  }
  return {
    peer,
    task,
    threads,
    variant,
    int8Dot,
    crossOriginIsolated: self.crossOriginIsolated,
    loadMs,
    readyMs,
    load,
    times,
    medianMs: median(times),
    // Linear memory never shrinks: its size after the runs is the module's peak.
    wasmMemoryBytes: wasmMemory ? wasmMemory.buffer.byteLength : null,
    embeds: Array.from(embeds),
  };
}

// Our peer runs in a module Worker, as in the page (www/worker.js): there the threaded build's
// caller blocks on Atomics.wait instead of spinning on the main thread next to its pool.
// onnxruntime-web runs on the page's thread, as its own examples do (it starts its own workers).
const inWorker = typeof document === 'undefined';

function finish(r) {
  window.__bench = r;
  document.getElementById('status').textContent = r.error ? `error: ${r.error}` : `done: ${r.medianMs.toFixed(0)} ms`;
}

if (inWorker) {
  main().then(
    (r) => postMessage(r),
    (e) => postMessage({ error: String(e?.stack ?? e) }),
  );
} else if (ours) {
  const w = new Worker(new URL(`bench.js${location.search}`, import.meta.url), { type: 'module' });
  w.onmessage = ({ data }) => finish(data);
  w.onerror = (e) => finish({ error: `worker: ${e.message}` });
} else {
  main().then(finish, (e) => finish({ error: String(e?.stack ?? e) }));
}
