// Module worker: the only owner of the WebAssembly detector. Everything that touches the
// model (loading, text encoding, scoring, MuSc batches, overlays) runs here so the page never
// freezes. Messages: {id, type, payload} in; {id, ok, result|error} or {type:'progress', ...} out.
// The wasm package is imported once start() has picked the build: pkg (single-threaded, with the
// WebGPU image tower) when the image tower is to run on WebGPU (see probeWebGpu), else
// pkg-threads (wasm threads, a rayon pool of Web Workers) on a cross-origin isolated page with
// more than one core, else pkg. Each comes in two variants: the SIMD128 one (pkg, pkg-threads) and,
// where the browser validates relaxed SIMD (see relaxedSimd) and the site has them, the
// relaxed-SIMD one (pkg-relaxed, pkg-threads-relaxed: fused multiply-adds in the f32 GEMM).
let wasm = null;
let ClipLoader, Image, renderOverlay, photoMap, regionsOf;
import { dtypeOfHeader, sha256Hex, fetchWithProgress, responseChunks, WEIGHTS_CACHE } from './common.js';
import { checkWorker, fetchVerified } from './deploy.js';

// This file's version, stamped by tests/browser/site-index.mjs (see deploy.js).
const BUILD_ID = 'dev';

let model = null; // ClipModel
let modelInfo = null; // {label, weightsSha256, test, dtype, source, rest}
let loadGen = 0; // the latest load; an older load's background stream stops
let refs = null; // References (few-shot: WinCLIP+'s, or AdaptCLIP's when refsKind is 'adaptclip')
let refsKind = null; // 'fewshot' | 'adaptclip': the mode `refs` were embedded for
let refItems = null; // the reference files, to embed them again for the other mode
let batchResult = null; // BatchResult
let current = null; // {map: the map at the photo's (bounded) size, width, height, regions?}
// Test hook: ?plantmap=1 replaces each single image's map (at the model's input size) with a
// known pattern before it is resampled to the photo: 0 everywhere, 1 at the cell
// (⌊¾n⌋, ⌊¼n⌋), so the browser suite can check where a map value lands on the photo.
const plantMap = new URL(self.location.href).searchParams.get('plantmap') === '1';
const textCache = new Map();
const state = { limits: null };
// Where the image tower runs. ?backend=auto|gpu|cpu and the test hook ?gpufail=adapter|forward
// come from the page's URL (forwarded by main.js).
const gpu = {
  backend: 'auto',
  wanted: false, // WebGPU is to be used (the single-threaded build is loaded)
  active: false, // the loaded model's image tower is on the GPU
  adapter: null, // the adapter's description
  weights: 'f32', // how the GPU stores the matrices (f16 where lossless and supported)
  note: '', // why the CPU runs (no WebGPU, a software adapter, …)
  failure: null, // the GPU failure that switched to the CPU (shown by the page)
};
let cpuThreads = 1;
// This module's folder: build.json, the wasm builds and pool-guard.js are found next to it (not at
// self.location, which is a blob: URL when a page of another origin starts it; see api.js).
const HERE = new URL('./', import.meta.url);
// The npm package's worker carries its build.json here (packages/anoscope/assemble.mjs); the site's
// fetches build.json.
const EMBEDDED_BUILD = null;
// Where a bundler put the single-threaded build when it bundled the package (api.js passes
// ?glue=URL&wasm=URL on this module's URL): those files, and no threaded build (not emitted).
const MOVED = (() => {
  const q = new URL(import.meta.url).searchParams;
  return q.get('glue') && q.get('wasm') ? { glue: q.get('glue'), wasm: q.get('wasm') } : null;
})();
// The module variant running: {relaxed, note, dotForced} (note: why relaxed SIMD is not used, or
// ''; dotForced: ?int8dot= chose the int8 dot product).
const simd = { relaxed: false, note: '', dotForced: false };

// A module of one function, `v128.const 0 ×3; f32x4.relaxed_madd`: valid only where the engine
// has relaxed SIMD (Chrome ≥ 114; Firefox and Safari behind flags as of 2026).
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type section: () -> v128
  0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
  0x0a, 0x3d, 0x01, 0x3b, 0x00, // code section: one body of 59 bytes, no locals
  ...[0, 1, 2].flatMap(() => [0xfd, 0x0c, ...new Array(16).fill(0)]), // v128.const 0, three times
  0xfd, 0x85, 0x02, // f32x4.relaxed_madd
  0x0b, // end
]);

/**
 * Whether this engine runs relaxed SIMD: WebAssembly.validate of RELAXED_PROBE. Test hook:
 * ?relaxedprobe=fail validates a broken probe (as on an engine without relaxed SIMD).
 */
function relaxedSimd(params) {
  const probe = params.get('relaxedprobe') === 'fail' ? RELAXED_PROBE.subarray(0, RELAXED_PROBE.length - 1) : RELAXED_PROBE;
  try {
    return WebAssembly.validate(probe);
  } catch {
    return false;
  }
}

function progress(stage, done, total, extra = {}) {
  postMessage({ type: 'progress', stage, done, total, ...extra });
}

/** Threads for the threaded build, or 0 where it cannot or should not run. */
function wantedThreads(build, requested) {
  if (!build.wasmThreads || requested === 1) return 0;
  if (!self.crossOriginIsolated || typeof SharedArrayBuffer !== 'function') return 0;
  const cores = navigator.hardwareConcurrency || 1;
  const n = requested > 1 ? requested : cores;
  return n > 1 ? n : 0;
}

/**
 * The WebGPU adapter the image tower would run on: {name, software} or {error}. A software
 * adapter (SwiftShader, which headless Chromium offers with --enable-unsafe-webgpu; any fallback
 * adapter) is far slower than the CPU path, so ?backend=auto leaves it alone, as the CLI's
 * --backend auto skips CPU adapters.
 */
async function probeWebGpu() {
  if (!navigator.gpu) return { error: 'this browser offers no WebGPU' };
  let adapter;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    return { error: `the WebGPU adapter request failed: ${e?.message ?? e}` };
  }
  if (!adapter) return { error: 'WebGPU offers no adapter here' };
  const info = adapter.info ?? {};
  const name = info.description || [info.vendor, info.architecture].filter(Boolean).join(' ') || 'unnamed adapter';
  const software =
    !!(adapter.isFallbackAdapter || info.isFallbackAdapter) ||
    /swiftshader|llvmpipe|lavapipe|software|warp/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`);
  return { name: software && !/swiftshader/i.test(name) ? `${name}, software` : name, software };
}

/** Decides whether the image tower runs on WebGPU (fills `gpu`). */
async function chooseBackend(params) {
  const b = params.get('backend');
  gpu.backend = b === 'gpu' || b === 'cpu' ? b : 'auto';
  if (gpu.backend === 'cpu') {
    gpu.note = 'chosen with ?backend=cpu';
    return;
  }
  const probe = await probeWebGpu();
  if (probe.error) {
    gpu.note = probe.error;
    if (gpu.backend === 'gpu') gpu.failure = `WebGPU is not available (${probe.error})`;
  } else if (gpu.backend === 'auto' && probe.software) {
    gpu.note = `the only WebGPU adapter, ${probe.name}, runs on the CPU; ?backend=gpu forces it`;
  } else {
    gpu.wanted = true;
    gpu.adapter = probe.name;
  }
}

/** What the page shows: {gpu, gpuWanted, label, note, failure, threads, int8, int8Dot, dotNote}.
 * The CPU label names int8 while the loaded model's image tower runs in int8 (a q8 checkpoint on
 * the CPU), and in the relaxed-SIMD module when its int8 layers run the SIMD128 dot product
 * (where this CPU has no byte dot product, the engine emulates the relaxed one, slower:
 * crate/src/model/wasm_qgemm.rs). */
function backendInfo() {
  const int8 = !!model && !gpu.active && model.isInt8();
  const int8Dot = int8 ? (model.int8Kernel?.() ?? null) : null;
  const viaSimd128 = int8 && simd.relaxed && int8Dot === 'simd128';
  const int8Label = int8 ? (viaSimd128 ? ', int8 via SIMD128 dot' : ', int8') : '';
  const cpu = `CPU (WebAssembly SIMD${simd.relaxed ? ' + relaxed' : ''}${int8Label}, ${cpuThreads} thread${cpuThreads === 1 ? '' : 's'})`;
  const dotNote = !viaSimd128
    ? ''
    : simd.dotForced
      ? 'int8 runs the SIMD128 dot product (chosen with ?int8dot=simd128)'
      : 'int8 runs the SIMD128 dot product: this CPU has no byte dot product (VNNI), so the browser emulates the relaxed one, slower';
  return {
    gpu: gpu.active,
    // The image tower is to run on WebGPU (the page then defaults to a model's reference variant).
    gpuWanted: gpu.wanted,
    int8,
    backend: gpu.backend,
    label: gpu.active ? `GPU (WebGPU, ${gpu.adapter}, ${gpu.weights} weights)` : cpu,
    note: gpu.active ? '' : gpu.note,
    failure: gpu.failure,
    threads: cpuThreads,
    relaxedSimd: simd.relaxed,
    simdNote: simd.note,
    int8Dot,
    dotNote,
  };
}

/** The GPU failed: the CPU runs from now on (this session), and the page says why. */
function gpuFailed(reason) {
  gpu.active = false;
  gpu.wanted = false;
  gpu.failure = reason;
  gpu.note = 'WebGPU failed';
  postMessage({ type: 'backend', ...backendInfo() });
}

/** Puts a freshly loaded model's image tower on the GPU when the page runs on WebGPU. */
async function attachGpu(m) {
  if (!gpu.wanted) return;
  progress('load', 0, 1, { label: 'uploading the image tower to the GPU' });
  try {
    await m.useGpu();
    gpu.weights = m.gpuWeights();
    gpu.active = true;
    postMessage({ type: 'backend', ...backendInfo() });
  } catch (e) {
    gpuFailed(`WebGPU could not start (${e?.message ?? e})`);
  }
}

/** After a GPU call: a pass that failed was redone on the CPU; say so and stay there. */
function checkGpu(m) {
  if (gpu.active && !m.gpuActive()) gpuFailed(`WebGPU failed (${m.gpuFailure() ?? 'unknown error'})`);
}

// ---------------------------------------------------------------------------------------------
// Out of memory and cancel.
//
// A trap (Rust aborts with `unreachable` when an allocation fails, e.g. when memory.grow hits
// the module's maximum) leaves the instance unusable: the worker reports {type:'fatal', oom}
// and answers nothing more; the page terminates it and starts a new one (main.js restartWorker).
//
// Cancel is cooperative. The page cancels every request it sent up to an id: through a
// SharedArrayBuffer (cross-origin isolated pages) that checkCancel() reads even while a
// synchronous wasm call runs (MuSc calls its progress callback after each image encoded and
// each layer scored; the text tower after each prompt), else through a {type:'cancel'} message,
// which is read between requests and at await points. Any long run that reports progress
// (tiles, when they come) stops at its next report by calling checkCancel() there.

let wasmMemory = null;
/** The WebAssembly memory's size in bytes: it never shrinks, so this is the high-water mark so far. */
const wasmBytes = () => (wasmMemory ? wasmMemory.buffer.byteLength : 0);
let dead = null; // the trap that ended this instance
let cancelFlag = null; // Int32Array over the page's SharedArrayBuffer: cancelled up to this id
let cancelledUpTo = 0; // the same, from {type:'cancel'} messages
let currentId = 0; // the request being handled

class CancelledError extends Error {}

/** The requests a cancel stops (overlays and bookkeeping always run). */
const CANCELLABLE = new Set(['detect', 'batch', 'references', 'text']);

/** The modes that score with the loaded model's learned file instead of prompts. */
const LEARNED_MODES = new Set(['anomalyclip', 'adaptclip']);

// Test hook: ?stepdelay=MS makes every scoring step MS ms longer (each MuSc progress step, and
// each image before it is scored), so the browser suite can act in the middle of a run.
const stepDelay = Math.min(Number(new URL(self.location.href).searchParams.get('stepdelay')) || 0, 10_000);

/** The test hook's wait inside a synchronous wasm call (Atomics.wait blocks a worker). */
function stepPause() {
  if (stepDelay && typeof SharedArrayBuffer === 'function') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, stepDelay);
}

// Test hook: ?blockdelay=MS makes every transformer block of a CPU image pass MS ms longer (the
// wasm stop check runs after each block), so the browser suite can cancel in the middle of one image.
const blockDelay = Math.min(Number(new URL(self.location.href).searchParams.get('blockdelay')) || 0, 10_000);

/** Whether the page cancelled the request being handled. */
function isCancelled() {
  const upTo = Math.max(cancelledUpTo, cancelFlag ? Atomics.load(cancelFlag, 0) : 0);
  return !!currentId && currentId <= upTo;
}

/** Throws when the page cancelled the request being handled. */
function checkCancel() {
  if (isCancelled()) throw new CancelledError('cancelled');
}

/**
 * The stop check wasm runs after every transformer block of a CPU image pass (setInterrupt):
 * Cancel then stops one long image (a learned mode at 518 px takes about a minute on ViT-L)
 * within a block. It reads the SharedArrayBuffer flag, so it works on cross-origin isolated
 * pages; elsewhere the {type:'cancel'} message is read only between requests.
 */
function blockCheck() {
  if (blockDelay && typeof SharedArrayBuffer === 'function') Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, blockDelay);
  checkCancel();
}

const WASM_PAGE = 65536;

/** The module's memory maximum in 64 KiB pages, read from its binary (memory import or memory
 * section); 65536 (4 GiB, wasm32's ceiling) when it declares none. */
function maxMemoryPages(bytes) {
  let at = 8;
  const u32 = () => {
    let r = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[at++];
      r += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (b < 0x80) return r;
    }
  };
  const limits = () => {
    const flags = bytes[at++];
    u32();
    return flags & 1 ? u32() : 65536;
  };
  while (at < bytes.length) {
    const id = bytes[at++];
    const size = u32();
    const end = at + size;
    if (id === 2) {
      for (let n = u32(); n > 0; n -= 1) {
        at += u32(); // module name
        at += u32(); // field name
        const kind = bytes[at++];
        if (kind === 2) return limits();
        if (kind === 0) u32();
        else if (kind === 1) (at++, limits());
        else if (kind === 3) at += 2;
        else break;
      }
    } else if (id === 5 && u32() > 0) {
      return limits();
    }
    at = end;
  }
  return 65536;
}

/** Grows `memory` so that only `mb` MiB remain below `maxPages`: the allocator's next growth
 * past that fails as it would at the 4 GiB ceiling. */
function capMemory(memory, mb, maxPages) {
  const have = memory.buffer.byteLength / WASM_PAGE;
  const target = maxPages - Math.ceil((mb * 2 ** 20) / WASM_PAGE);
  if (target > have) memory.grow(target - have);
}

/** A trap of the instance (not an ordinary error the detector returned): {oom, error}. */
function trapOf(e) {
  if (e?.cause && !(e instanceof WebAssembly.RuntimeError)) return trapOf(e.cause);
  const msg = `${e?.message ?? e}`;
  const trap = e instanceof WebAssembly.RuntimeError || (e instanceof RangeError && /memory|allocation/i.test(msg));
  if (!trap) return null;
  const oom = /unreachable|out of memory|allocation|memory\.grow|could not allocate/i.test(msg) || e instanceof RangeError;
  return { oom, error: msg };
}

/**
 * Starts the rayon pool with each pool worker run through pool-guard.js, which reports the
 * thread's death (a trap there) to the page over a BroadcastChannel: this worker cannot, as it
 * waits for that thread's job. The page learns the channel's name from a {type:'poolChannel'}
 * message (a page that does not listen just gets no report).
 */
async function startPool(threads) {
  const name = `anoscope-pool-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  postMessage({ type: 'poolChannel', name });
  const Native = self.Worker;
  self.Worker = class extends Native {
    constructor(url, options) {
      super(new URL('pool-guard.js', HERE), options);
      // First in this worker's queue, before wasm-bindgen-rayon's init message.
      this.postMessage({ type: 'anoscope-pool-guard', src: String(url), channel: name });
    }
  };
  try {
    await wasm.initThreadPool(threads);
  } finally {
    self.Worker = Native;
  }
}

/** When `e` is a trap: marks the instance dead and tells the page (once); true for a trap. */
function reportTrap(e, request, id) {
  const trap = trapOf(e);
  if (!trap || dead) return !!trap;
  dead = trap;
  console.error(`anoscope worker: the WebAssembly instance trapped in ${request} (${trap.error}); it must be restarted`, e?.cause ?? e);
  const memoryBytes = wasmMemory ? wasmMemory.buffer.byteLength : 0;
  postMessage({ type: 'fatal', id, request, oom: trap.oom, error: trap.error, memoryBytes });
  return true;
}

/** Picks the build, fetches its wasm, checks its sha256 against build.json, then instantiates it. */
async function start() {
  const build = EMBEDDED_BUILD ?? (await (await fetch(new URL('build.json', HERE), { cache: 'no-cache' })).json());
  const params = new URL(self.location.href).searchParams;
  // One version: this file, the page that started it (?build=) and build.json (deploy.js).
  checkWorker(build, BUILD_ID, params.get('build'));
  await chooseBackend(params);
  // ?threads=N on the page URL (forwarded by main.js) forces a thread count; 1 = the plain build.
  // WebGPU runs in the plain build (the threaded one has no GPU code).
  const requested = Number(params.get('threads') || 0);
  const threads = gpu.wanted || MOVED ? 0 : wantedThreads(build, requested);
  // The relaxed-SIMD variant of that build where the engine validates the probe and the site has
  // it (the npm package carries the SIMD128 builds only).
  const relaxedEntry = MOVED ? null : threads ? build.wasmThreadsRelaxed : build.wasmRelaxed;
  const engineRelaxed = relaxedSimd(params);
  simd.relaxed = engineRelaxed && !!relaxedEntry;
  simd.note = simd.relaxed ? '' : engineRelaxed ? 'this site has no relaxed-SIMD build' : 'this browser has no relaxed SIMD';
  const entry = simd.relaxed ? relaxedEntry : threads ? build.wasmThreads : build.wasm;
  const dir = (threads ? 'pkg-threads' : 'pkg') + (simd.relaxed ? '-relaxed' : '');
  // The wasm and its glue code must be the ones build.json lists (else: damaged or mid-deploy).
  const wasmUrl = MOVED ? MOVED.wasm : new URL(entry.url, HERE).href;
  const glueUrl = MOVED ? MOVED.glue : new URL(`${dir}/anoscope.js`, HERE).href;
  const { bytes, sha256: wasmSha256 } = await fetchVerified(wasmUrl, entry.sha256, build, `The WebAssembly module (${entry.url})`);
  if (entry.js) await fetchVerified(glueUrl, entry.js.sha256, build, `Its glue code (${entry.js.url})`);
  wasm = await import(glueUrl);
  const exports = await wasm.default({ module_or_path: bytes });
  if (threads) await startPool(threads);
  wasmMemory = exports.memory;
  // Test hook: ?memcap=MB leaves only MB megabytes of WebAssembly memory to the detector, so a
  // big batch runs out of memory for real (see capMemory).
  const memcap = Number(params.get('memcap') || 0);
  if (memcap > 0) capMemory(exports.memory, memcap, maxMemoryPages(bytes));
  ({ ClipLoader, Image, renderOverlay, photoMap } = wasm);
  wasm.setInterrupt?.(blockCheck);
  regionsOf = wasm.regions;
  state.limits = JSON.parse(wasm.limits());
  cpuThreads = wasm.threads();
  // Test hook: ?int8dot=simd128|relaxed picks the int8 dot product (refused by the SIMD128 module
  // for relaxed: it then keeps its own).
  const int8dot = params.get('int8dot');
  if (int8dot && wasm.setInt8Dot) {
    try {
      wasm.setInt8Dot(int8dot);
      simd.dotForced = true;
    } catch (e) {
      console.warn(`anoscope worker: ?int8dot=${int8dot} ignored: ${e?.message ?? e}`);
    }
  }
  // Test hook: ?gpufail=adapter (useGpu fails) or forward (every GPU pass fails).
  if (gpu.wanted && wasm.setGpuFailure) wasm.setGpuFailure(params.get('gpufail') || '');
  if (gpu.wanted && !wasm.setGpuFailure) gpuFailed('this build of the module has no WebGPU code');
  return {
    version: wasm.version(),
    limits: state.limits,
    build,
    buildId: BUILD_ID,
    wasmUrl: entry.url,
    wasmSha256, // as computed from the bytes instantiated
    threads: cpuThreads,
    relaxedSimd: simd.relaxed,
    // Whether the relaxed int8 dot product saturates (null in the SIMD128 module).
    relaxedDotSaturates: wasm.relaxedDotSaturates?.() ?? null,
    backend: backendInfo(),
  };
}

const ready = start().then(
  (info) => {
    postMessage({ type: 'ready', ...info });
    return info;
  },
  (e) => {
    const error = e?.name === 'DeployMismatch' ? e.message : `could not start the WebAssembly module: ${e?.message ?? e}`;
    postMessage({ type: 'fatal', error, deploy: e?.name === 'DeployMismatch' });
    throw e;
  },
);

function needModel() {
  if (!model) throw new Error('no model is loaded yet: choose a checkpoint first');
  return model;
}

function decodeAll(files) {
  // files: [{name, bytes: ArrayBuffer}]; decode errors name the file, and what was decoded is freed.
  const out = [];
  try {
    for (const f of files) {
      try {
        out.push(Image.decode(new Uint8Array(f.bytes)));
      } catch (e) {
        throw new Error(`${f.name}: ${e?.message ?? e}`, { cause: e });
      }
    }
    return out;
  } catch (e) {
    for (const im of out) im.free();
    throw e;
  }
}

/** The map at the model's input size resampled onto the photo (the inverse of the squash
 * resize, bounded to 4096 px on the long side): {map, width, height, bounded}. */
function toPhoto(map, n, photoW, photoH) {
  const pm = photoMap(map, n, n, photoW, photoH, 0);
  const out = { map: pm.map(), width: pm.width, height: pm.height, bounded: pm.width !== photoW || pm.height !== photoH };
  pm.free();
  return out;
}

/** Remembers the photo-size map the overlay layer and the regions are drawn from. */
function setPhotoCurrent(photo) {
  current = { map: photo.map, width: photo.width, height: photo.height, regions: null };
}

/** Detection → plain transferable result; the photo-size map becomes `current` for overlays.
 * `photoW`/`photoH`: the photo's own size (the map goes back onto it). */
function publish(det, photoW, photoH, extra = {}) {
  const out = {
    score: det.score,
    width: det.width,
    height: det.height,
    map: det.map(),
    input: det.input(),
    sourceWidth: photoW,
    sourceHeight: photoH,
    wasmMemoryBytes: wasmBytes(),
    ...extra,
  };
  det.free();
  if (plantMap) {
    const n = out.width;
    out.map = new Float32Array(n * n);
    out.map[Math.floor(n / 4) * n + Math.floor((3 * n) / 4)] = 1;
  }
  out.photo = toPhoto(out.map, out.width, photoW, photoH);
  setPhotoCurrent(out.photo);
  return out;
}

/** The regions of `current` at `threshold` (computed once per threshold). */
function currentRegions(threshold) {
  if (!Number.isFinite(threshold)) return [];
  if (current.regions?.threshold !== threshold) {
    current.regions = { threshold, list: JSON.parse(regionsOf(current.map, current.width, current.height, threshold, 1)) };
  }
  return current.regions.list;
}

let blank = new Uint8Array(0);

/** The text tower for prompts the prompt file does not cover: the rest of the checkpoint when it
 * is still streaming in, else (loaded without it) a second pass over the cached file. */
async function ensureText(spec) {
  let m = needModel();
  if (m.hasText() || m.promptFileCovers(spec.category, spec.object || undefined, !!spec.descriptions, spec.defects?.length ? spec.defects : undefined)) return m;
  const info = modelInfo;
  if (info.rest) await info.rest;
  m = needModel();
  if (modelInfo !== info || m.hasText() || !info.textInFile) return m;
  const label = 'loading the text tower for custom prompts';
  progress('download', 0, 0, { label });
  const src = await openWeights(info.source, label, state.limits.maxCheckpointBytes, false);
  const loader = new ClipLoader(info.source.configName, info.source.configText, 'weights', src.total || undefined, false, true);
  const stream = { loader, src, it: src.chunks[Symbol.asyncIterator](), label, expectSha: info.weightsSha256, gen: loadGen };
  try {
    await feed(stream, () => false);
    await verify(stream);
    if (modelInfo === info) loader.attachText(m);
  } finally {
    loader.free();
  }
  return needModel();
}

async function textFor({ category, object, descriptions, defects }) {
  const key = JSON.stringify([category, object ?? null, !!descriptions, defects ?? null]);
  let pair = textCache.get(key);
  if (!pair) {
    const m = await ensureText({ category, object, descriptions, defects });
    // The text tower reports (prompts encoded, total); a prompt-file hit reports nothing.
    const t0 = performance.now();
    let encoded = false;
    pair = m.textPair(
      category,
      object || undefined,
      !!descriptions,
      defects && defects.length ? defects : undefined,
      (done, total) => {
        checkCancel();
        encoded = true;
        progress('text', done, total, { label: `encoding prompts with the text tower: ${done} of ${total}` });
      },
    );
    if (encoded) progress('text', 1, 1, { label: 'prompts encoded', ms: performance.now() - t0 });
    textCache.set(key, pair);
  }
  return pair;
}

// ---------------------------------------------------------------------------------------------
// Streaming checkpoint loads: the file's chunks go into a ClipLoader (wasm) as they arrive, so the
// page never holds the whole file; the image tower is usable as soon as its bytes are in.

const SLICE_BYTES = 4 << 20;

/** A dropped file read in slices. */
async function* blobChunks(blob) {
  for (let at = 0; at < blob.size; at += SLICE_BYTES) {
    yield new Uint8Array(await blob.slice(at, at + SLICE_BYTES).arrayBuffer());
  }
}

// ---------------------------------------------------------------------------------------------
// Offline copies (Cache API). Storing can be refused (quota exceeded, no storage in a private
// window, site data cleared while the page is open): the model still loads from the download,
// and a {type: 'storage'} message tells the page why offline use is unavailable. A copy is kept
// with the sha256 it was stored for (x-anoscope-sha256): one stored for another sha256 (the site
// was redeployed with a new file) is dropped and downloaded again; every copy is checked again
// as it is read.

// Test hook: ?cachefail=quota (every put fails as over quota), unavailable (no Cache API),
// cleared (the site's storage is cleared right after each put), forwarded by main.js.
const cacheFail = new URL(self.location.href).searchParams.get('cachefail') || '';
const SHA_HEADER = 'x-anoscope-sha256';

/** Why storing failed, in a few words. */
function storageReason(e) {
  if (e?.name === 'QuotaExceededError') return 'the storage quota is exceeded';
  if (e?.name === 'SecurityError') return 'the browser gives this page no storage here, as in some private windows';
  if (e?.name === 'Cleared') return "the site's stored data was cleared while the page was open";
  return `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
}

/** The checkpoint cache: {cache} or {cache: null, reason} where the browser offers none. */
async function weightsCache() {
  try {
    if (cacheFail === 'unavailable' || typeof caches === 'undefined') {
      throw new DOMException('no Cache API in this context', 'SecurityError');
    }
    return { cache: await caches.open(WEIGHTS_CACHE), reason: null };
  } catch (e) {
    return { cache: null, reason: storageReason(e) };
  }
}

/** The stored copy of `url` unless it was stored for another sha256 (then it is dropped). */
async function cachedCopy(cache, url, sha256) {
  const hit = cache ? await cache.match(url) : undefined;
  if (!hit) return undefined;
  const stored = hit.headers.get(SHA_HEADER);
  if (sha256 && stored && stored !== sha256) {
    await cache.delete(url);
    return undefined;
  }
  return hit;
}

/**
 * Stores `body` (a ReadableStream or bytes) as the copy of `url`: {ok: true}, or {ok: false,
 * reason}; never throws. A Cache API put is all or nothing, so a refused or broken one leaves no
 * entry; afterwards the entry is looked up again (a put into storage cleared meanwhile "succeeds").
 */
async function storeCopy({ cache, reason }, url, body, sha256, total) {
  try {
    if (!cache) {
      await body?.cancel?.(); // an unread copy of a stream would be held in memory
      return { ok: false, reason };
    }
    if (cacheFail === 'quota') {
      await body?.cancel?.();
      throw new DOMException('test hook ?cachefail=quota', 'QuotaExceededError');
    }
    const headers = new Headers({ 'content-type': 'application/octet-stream', [SHA_HEADER]: sha256 });
    if (total) headers.set('content-length', String(total));
    await cache.put(url, new Response(body, { headers }));
    if (cacheFail === 'cleared') await caches.delete(WEIGHTS_CACHE);
    if (!(await caches.open(WEIGHTS_CACHE).then((c) => c.match(url)))) throw new DOMException('the copy is gone', 'Cleared');
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: storageReason(e) };
  }
}

/** The weights of a load spec as chunks: a dropped file, the Cache API copy, or a download
 * (copied into the cache as it streams when `store`; `settle(ok)` keeps or drops that copy and
 * tells the page whether it was kept). */
async function openWeights(p, label, maxBytes, store = true) {
  if (p.weightsFile) {
    return { total: p.weightsFile.size, chunks: blobChunks(p.weightsFile), settle: async () => {} };
  }
  const storage = await weightsCache();
  const { cache } = storage;
  let res = await cachedCopy(cache, p.weightsUrl, p.weightsSha256);
  const cached = !!res;
  if (!res) {
    res = await fetch(p.weightsUrl);
    if (!res.ok) throw new Error(`download of ${label} failed: HTTP ${res.status} for ${p.weightsUrl}`);
  }
  // Refused before anything is read into memory.
  const total = Number(res.headers.get('content-length')) || 0;
  if (total > maxBytes) throw new Error(`${label} is ${total} bytes; the page accepts at most ${maxBytes} bytes`);
  const put = !cached && store && p.weightsSha256 ? storeCopy(storage, p.weightsUrl, res.clone().body, p.weightsSha256, total) : null;
  return {
    total,
    cached,
    chunks: responseChunks(res, maxBytes, total),
    async settle(ok) {
      const stored = put ? await put : null;
      if (!ok && cache && (stored?.ok || cached)) await cache.delete(p.weightsUrl);
      if (ok && stored) postMessage({ type: 'storage', file: label, weights: true, bytes: total, ...stored });
    },
  };
}

/**
 * The storage of a safetensors file (dtypeOfHeader: 'q8', 'f16', 'f32', …), read from its header
 * as the first chunks pass by: `dtype` is undefined until the header is in, null when it cannot be
 * read (the loader then reports the broken file).
 */
class HeaderSniffer {
  constructor() {
    this.parts = [];
    this.have = 0;
    this.need = 8;
    this.dtype = undefined;
  }

  push(chunk) {
    if (this.dtype !== undefined) return;
    this.parts.push(chunk);
    this.have += chunk.byteLength;
    while (this.dtype === undefined && this.have >= this.need) {
      const buf = new Uint8Array(this.have);
      let at = 0;
      for (const c of this.parts) {
        buf.set(c, at);
        at += c.byteLength;
      }
      this.parts = [buf];
      if (this.need === 8) {
        const n = Number(new DataView(buf.buffer).getBigUint64(0, true));
        if (n <= 0 || n > 100_000_000) this.dtype = null;
        this.need = 8 + n;
        continue;
      }
      try {
        this.dtype = dtypeOfHeader(JSON.parse(new TextDecoder().decode(buf.subarray(8, this.need))));
      } catch {
        this.dtype = null;
      }
    }
    if (this.dtype !== undefined) this.parts = [];
  }
}

/** Pushes chunks until `stop()` or the end (`s.ended`). With an expected sha256 a loader error
 * waits for the end: a corrupt download is reported as such, as before. */
async function feed(s, stop) {
  let last = 0;
  for (;;) {
    if (s.gen !== loadGen) {
      await s.it.return?.();
      throw new Error('another model is being loaded');
    }
    const step = await s.it.next();
    if (step.done) {
      s.ended = true;
      progress('download', s.loader.received(), s.src.total || s.loader.received(), { label: s.label });
      return;
    }
    s.sniff?.push(step.value);
    try {
      s.loader.push(step.value);
    } catch (e) {
      if (!s.expectSha || trapOf(e)) throw e;
      s.error ??= e;
    }
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      progress('download', s.loader.received(), s.src.total, { label: s.label });
    }
    if (!s.error && stop()) return;
  }
}

/** After the end: the sha256 (when known), then the loader's own checks; keeps or drops the cached copy. */
async function verify(s) {
  const got = s.loader.sha256();
  if (s.expectSha && got !== s.expectSha) {
    await s.src.settle(false);
    if (s.src.cached) {
      // Never trusted: a damaged copy in the browser's storage is removed, the next load downloads.
      throw new Error(
        `the stored copy of ${s.label} is damaged: sha256 ${got} (${s.loader.received()} bytes), expected ` +
          `${s.expectSha}. It was removed; load the model again to download it.`,
      );
    }
    throw new Error(
      `download of ${s.label} is incomplete or corrupt: sha256 ${got} (${s.loader.received()} bytes), ` +
        `expected ${s.expectSha}. Nothing was loaded; try again.`,
    );
  }
  try {
    if (s.error) throw s.error;
    s.loader.finish();
  } catch (e) {
    await s.src.settle(false);
    throw e;
  }
  await s.src.settle(true);
  return got;
}

async function getBytes(url, label, expectSha, maxBytes = state.limits.maxCheckpointBytes) {
  const storage = await weightsCache();
  const read = async (res) => {
    // Refused before anything is read into memory.
    const announced = Number(res.headers.get('content-length'));
    if (announced > maxBytes) {
      throw new Error(`${label} is ${announced} bytes; the page accepts at most ${maxBytes} bytes`);
    }
    return fetchWithProgress(res, (done, total) => progress('download', done, total, { label }), maxBytes);
  };
  const hit = await cachedCopy(storage.cache, url, expectSha);
  if (hit) {
    const bytes = await read(hit).catch(() => null);
    if (bytes && (!expectSha || (await sha256Hex(bytes)) === expectSha)) return bytes;
    // A damaged copy is dropped and the file downloaded again.
    await storage.cache.delete(url);
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`download of ${label} failed: HTTP ${res.status} for ${url}`);
  const bytes = await read(res);
  if (expectSha) {
    const got = await sha256Hex(bytes);
    if (got !== expectSha) {
      throw new Error(
        `download of ${label} is incomplete or corrupt: sha256 ${got} (${bytes.byteLength} bytes), ` +
          `expected ${expectSha}. Nothing was loaded; try again.`,
      );
    }
    // Stored only once checked.
    const stored = await storeCopy(storage, url, bytes, expectSha, bytes.byteLength);
    postMessage({ type: 'storage', file: label, weights: false, bytes: bytes.byteLength, ...stored });
  }
  return bytes;
}

/** Embeds the reference `files` for `kind` ('fewshot': WinCLIP+, 'adaptclip': AdaptCLIP's
 * prompt-query adapter, on the CPU) and makes them the current references. */
async function embedReferences(m, files, kind) {
  // The images move into wasm (references() takes them over).
  let next;
  if (kind === 'adaptclip') next = m.adaptReferences(decodeAll(files));
  else next = gpu.active ? await m.referencesAsync(decodeAll(files)) : m.references(decodeAll(files));
  checkGpu(m);
  if (refs) refs.free();
  refs = next;
  refsKind = kind;
}

let batchDims = []; // the batch's photo sizes, [w, h] each

/** Tiled inspection of one photo (tiles::detect_tiled): a pass over the whole photo, then one per
 * tile, progress after each and a cancel check before the next (the callback throwing stops it). */
/** ?plantmap=1, tiled: every tile's map is 0 but one cell of the first tile (row 1, column 1)
 * and one of the last (row n−2, column n−2), both 1: corners no other tile covers, so the
 * stitched map is 1 at those cells' centres in the photo (photo.test.mjs checks where). */
function plantedTiles(planJson, count, n, width, height) {
  const maps = new Float32Array(count * n * n);
  maps[1 * n + 1] = 1;
  maps[(count - 1) * n * n + (n - 2) * n + (n - 2)] = 1;
  return wasm.stitchTiles(planJson, maps, n, n, width, height);
}

async function detectTiled(m, mode, image, pair, r, tiles, name, t0) {
  const report = (done, total) => {
    stepPause();
    checkCancel();
    progress('tiles', done, total, { label: done <= 1 ? 'whole photo' : `tile ${done - 1} of ${total - 1}` });
  };
  let res;
  try {
    res = gpu.active
      ? await m.detectTiledAsync(mode, image, pair, r, tiles, 0, report)
      : m.detectTiled(mode, image, pair, r, tiles, 0, report);
  } catch (e) {
    checkCancel(); // stopped by a cancel: reported as one
    throw e;
  }
  checkGpu(m);
  const plan = JSON.parse(res.plan);
  const n = res.inputSize;
  const out = {
    score: res.score,
    width: n,
    height: n,
    map: res.inputMap(),
    sourceWidth: image.width,
    sourceHeight: image.height,
    name,
    ms: performance.now() - t0,
    tiles: {
      count: plan.tiles.length,
      rows: plan.rows,
      cols: plan.cols,
      rects: plan.tiles,
      wholeScore: res.wholeScore,
      tileScores: Array.from(res.tileScores()),
    },
    photo: { map: res.map(), width: res.width, height: res.height, bounded: res.width !== image.width || res.height !== image.height },
  };
  res.free();
  if (plantMap) out.photo.map = plantedTiles(JSON.stringify(plan), plan.tiles.length, n, out.photo.width, out.photo.height);
  setPhotoCurrent(out.photo);
  return out;
}

const handlers = {
  /** {label, test, configName, configText?, configUrl?, weightsFile?(File), weightsUrl?, weightsSha256?,
   *   configSha256?, promptsUrl?, learnedUrl?, learnedSha256?, learnedImageSize?, dtype?}. Resolves once the image tower is in; the rest of the file
   *   streams on, then a {type: 'model'} message says whether the whole checkpoint checked out.
   *   `dtype` ('q8', 'f16', 'f32'): what the file must hold, checked on its header before the rest
   *   is read. A q8 file's image tower runs in int8 on the CPU (with WebGPU in f32, as any file). */
  async load(p) {
    const lim = (await ready).limits;
    const configText = p.configText ?? new TextDecoder().decode(await getBytes(p.configUrl, p.configName, p.configSha256));
    if (p.weightsFile && p.weightsFile.size > lim.maxCheckpointBytes) {
      throw new Error(`this checkpoint is ${p.weightsFile.size} bytes; the page accepts at most ${lim.maxCheckpointBytes} bytes`);
    }
    const gen = ++loadGen;
    const t0 = performance.now();
    const label = `${p.label} weights`;
    // The text tower is loaded now only when no prompt file covers the bundled categories.
    const wantText = !p.promptsUrl;
    const src = await openWeights(p, label, lim.maxCheckpointBytes);
    let loader;
    try {
      loader = new ClipLoader(p.configName, configText, 'weights', src.total || undefined, true, wantText);
    } catch (e) {
      await src.settle(false);
      throw e;
    }
    const sniff = new HeaderSniffer();
    const s = { loader, src, it: src.chunks[Symbol.asyncIterator](), label, expectSha: p.weightsSha256, gen, sniff };
    let next = null;
    let sha = null;
    let learned = null;
    try {
      const wrongDtype = () => !!p.dtype && sniff.dtype !== undefined && sniff.dtype !== p.dtype;
      await feed(s, () => wrongDtype() || loader.visionReady());
      if (wrongDtype()) {
        throw new Error(
          `${p.label} was to be the ${p.dtype} variant, but its weights file holds ${sniff.dtype ?? 'no readable header'} ` +
            `(${p.weightsUrl ?? p.weightsFile?.name}). Nothing was loaded.`,
        );
      }
      if (s.ended) sha = await verify(s);
      progress('load', 0, 1, { label: 'building the model' });
      next = loader.takeModel();
      // A learned file (AnomalyCLIP's prompts, converted): loaded before the GPU takes its copy
      // of the image tower's settings.
      if (p.learnedUrl) {
        const bytes = await getBytes(p.learnedUrl, 'learned file', p.learnedSha256);
        learned = { mode: next.loadLearned(bytes, p.learnedImageSize ?? undefined), imageSize: next.learnedSize() };
      }
      await attachGpu(next);
      // A q8 checkpoint on the CPU: its image tower runs in int8 (a no-op where the loader already
      // keeps it so). With WebGPU the GPU runs the tower in f32 from the same weights.
      if (sniff.dtype === 'q8' && !gpu.active && !next.isInt8()) next.quantizeInt8();
      if (s.ended && wantText) loader.attachText(next);
      if (p.promptsUrl) {
        const bundle = await getBytes(p.promptsUrl, 'prompt file', p.promptsSha256);
        next.loadPrompts(bundle, p.weightsSha256 ?? sha);
      }
    } catch (e) {
      if (trapOf(e)) throw e; // the instance is unusable: no clean-up calls into it
      next?.free();
      loader.free();
      if (!s.ended) await s.it.return?.().catch(() => {});
      throw e;
    }
    if (model) model.free();
    if (refs) refs.free();
    if (batchResult) batchResult.free();
    refs = null;
    refItems = null;
    batchResult = null;
    textCache.clear();
    model = next;
    const info = {
      label: p.label,
      weightsSha256: p.weightsSha256 ?? sha,
      test: !!p.test,
      dtype: sniff.dtype ?? null,
      textInFile: loader.fileHasText() ?? false,
      source: { weightsFile: p.weightsFile, weightsUrl: p.weightsUrl, weightsSha256: p.weightsSha256, configName: p.configName, configText },
      rest: null,
    };
    modelInfo = info;
    const readyMs = performance.now() - t0;
    if (s.ended) {
      loader.free();
    } else {
      // The rest of the file (the text tower, or only bytes to check) streams on in the background;
      // requests that need it (custom prompts, a dropped prompt file) wait for `rest`.
      info.rest = (async () => {
        try {
          await feed(s, () => false);
          const got = await verify(s);
          if (modelInfo !== info) return;
          if (wantText) loader.attachText(next);
          info.weightsSha256 ??= got;
          postMessage({ type: 'model', ok: true, label: p.label, hasText: next.hasText(), ms: performance.now() - t0, wasmMemoryBytes: wasmBytes() });
        } catch (e) {
          if (reportTrap(e, 'load')) return;
          if (modelInfo !== info) return;
          next.free();
          model = null;
          modelInfo = null;
          textCache.clear();
          postMessage({ type: 'model', ok: false, label: p.label, error: e?.message ?? String(e) });
        } finally {
          if (!dead) loader.free();
          info.rest = null;
        }
      })();
    }
    progress('load', 1, 1, { label: 'model ready' });
    // The backend label names int8 while this model's image tower runs in it (`relabel`: nothing
    // else changed, a failure already reported is not news).
    postMessage({ type: 'backend', ...backendInfo(), relabel: true });
    return {
      label: p.label,
      test: !!p.test,
      dtype: info.dtype,
      int8: model.isInt8() && !gpu.active,
      imageSize: model.imageSize(),
      hasText: model.hasText(),
      textInFile: info.textInFile,
      complete: s.ended,
      categories: model.categories(),
      promptFile: !!p.promptsUrl,
      learned,
      ms: readyMs,
    };
  },
  /** A prompt file dropped or picked by the user for the loaded model. */
  async loadPrompts({ bytes }) {
    // A dropped checkpoint's sha256 is known once all of it is in.
    if (modelInfo?.rest) await modelInfo.rest;
    const m = needModel();
    const cats = m.loadPrompts(new Uint8Array(bytes), modelInfo.weightsSha256);
    textCache.clear();
    return { categories: cats };
  },
  /** A learned file for the loaded model (anoscope convert --learned): {bytes} dropped or picked,
   * or {url, sha256} downloaded (sha256-checked and cached as the checkpoint's files). Checked
   * against the model by wasm loadLearned; on error the model and its learned file stay. */
  async loadLearned({ bytes, url, sha256, imageSize, name }) {
    if (modelInfo?.rest) await modelInfo.rest; // a file without text features needs the text tower
    needModel();
    const data = bytes ? new Uint8Array(bytes) : await getBytes(url, name ?? 'learned file', sha256);
    // The official .pth (a zip): its text features are computed with the text tower, loaded now
    // as for a custom prompt when the model came without it.
    if (data[0] === 0x50 && data[1] === 0x4b) await ensureText({ category: '', object: 'learned prompts' });
    const m = needModel();
    const onGpu = gpu.active;
    const mode = m.loadLearned(data, imageSize ?? undefined);
    // loadLearned released the GPU's copy of the image tower (its position embeddings now follow
    // the learned mode): upload it again.
    if (onGpu) {
      gpu.active = false;
      await attachGpu(m);
    }
    return { learned: { mode, imageSize: m.learnedSize() } };
  },
  async text(p) {
    const pair = await textFor(p);
    return { length: pair.length };
  },
  /** {mode, file: {name, bytes} | rgba: {data, width, height}, text: {...}} */
  async detect({ mode, file, rgba, text, tiles }) {
    needModel();
    if (stepDelay) await new Promise((r) => setTimeout(r, stepDelay));
    checkCancel();
    // The tray's references, embedded for the mode that uses them (few-shot, or few-shot AdaptCLIP).
    const refMode = mode === 'fewshot' || mode === 'adaptclip' ? mode : null;
    if (refMode && refItems && refsKind !== refMode) await embedReferences(needModel(), refItems, refMode);
    if (mode === 'fewshot' && !refs) throw new Error('few-shot mode needs at least one normal reference image in the tray');
    // The learned modes bring their own class pair (the model's learned file).
    const learnedMode = LEARNED_MODES.has(mode);
    const pair = learnedMode ? new Float32Array(0) : await textFor(text);
    const m = needModel();
    let image;
    if (rgba) {
      image = Image.fromRgba(new Uint8Array(rgba.data), rgba.width, rgba.height);
    } else {
      [image] = decodeAll([file]);
    }
    const t0 = performance.now();
    try {
      const r = refMode && refs ? refs : undefined; // adaptclip without references: zero-shot
      if (tiles && tiles !== 'off') return await detectTiled(m, mode, image, pair, r, tiles, file?.name, t0);
      const det = gpu.active ? await m.detectAsync(mode, image, pair, r) : m.detect(mode, image, pair, r);
      checkGpu(m);
      return publish(det, image.width, image.height, { ms: performance.now() - t0, name: file?.name });
    } finally {
      image.free();
    }
  },
  /** {files, mode}: the tray's normal references, embedded for `mode` (adaptclip: AdaptCLIP's
   * few-shot features; otherwise WinCLIP+'s) and kept, to embed them for the other mode later. */
  async references({ files, mode }) {
    const m = needModel();
    const lim = state.limits;
    if (files.length > lim.maxReferences) {
      throw new Error(`few-shot mode takes 1 to ${lim.maxReferences} normal reference images, got ${files.length}`);
    }
    await embedReferences(m, files, mode === 'adaptclip' ? 'adaptclip' : 'fewshot');
    refItems = files;
    return { count: files.length };
  },
  clearReferences() {
    if (refs) refs.free();
    refs = null;
    refItems = null;
    return {};
  },
  async batch({ files }) {
    const m = needModel();
    const lim = state.limits;
    if (files.length < 2 || files.length > lim.maxBatch) {
      throw new Error(`batch mode (MuSc) scores 2 to ${lim.maxBatch} images together, got ${files.length}`);
    }
    const images = decodeAll(files); // moved into wasm by batch()
    batchDims = images.map((im) => [im.width, im.height]);
    const t0 = performance.now();
    const report = (done, total, stage) => {
      stepPause();
      checkCancel();
      progress('batch', done, total, { label: stage });
    };
    const res = gpu.active ? await m.batchAsync(images, report) : m.batch(images, report);
    checkGpu(m);
    if (batchResult) batchResult.free();
    batchResult = res;
    const scores = Array.from(res.scores());
    const items = [];
    for (let i = 0; i < res.length; i += 1) {
      const d = res.detection(i);
      items.push({
        name: files[i].name,
        score: scores[i],
        width: d.width,
        height: d.height,
        map: d.map(),
        sourceWidth: batchDims[i][0],
        sourceHeight: batchDims[i][1],
        input: d.input(),
      });
      d.free();
    }
    return { items, ms: performance.now() - t0 };
  },
  batchOpen({ index, name }) {
    if (!batchResult) throw new Error('no batch result to open');
    const [w, h] = batchDims[index];
    return publish(batchResult.detection(index), w, h, { name });
  },
  /** Makes an earlier result (kept by the page) the one overlays are drawn for: its photo-size
   * map when kept ({photo}), else its map at input size resampled onto the photo. */
  setCurrent({ map, width, height, sourceWidth, sourceHeight, photo }) {
    if (photo) {
      if (photo.map.length !== photo.width * photo.height) throw new Error('result has the wrong size');
      setPhotoCurrent(photo);
      return {};
    }
    if (map.length !== width * height || width !== height) throw new Error('result has the wrong size');
    setPhotoCurrent(toPhoto(map, width, sourceWidth || width, sourceHeight || height));
    return { width: current.width, height: current.height };
  },
  /** The heat layer of `current` (inferno colours, the threshold outline) at the photo's
   * (bounded) size, and its regions at `threshold`. */
  overlay({ threshold }) {
    if (!current) throw new Error('nothing scored yet');
    const { map, width, height } = current;
    if (blank.length !== width * height * 4) blank = new Uint8Array(width * height * 4);
    const rgba = renderOverlay(blank, map, width, height, 1, threshold);
    return { rgba, width, height, regions: currentRegions(threshold) };
  },
  /** A thumbnail's heat layer (opacity 1, no outline) at `thumbWidth × thumbHeight`, the
   * photo's aspect: the map at input size resampled onto it (the inverse resize). `current` stays. */
  thumb({ map, width, height, thumbWidth, thumbHeight }) {
    if (map.length !== width * height || width !== height) throw new Error('result has the wrong size');
    const p = photoMap(map, width, height, thumbWidth, thumbHeight, 0);
    const rgba = renderOverlay(new Uint8Array(p.width * p.height * 4), p.map(), p.width, p.height, 1, NaN);
    const out = { rgba, width: p.width, height: p.height };
    p.free();
    return out;
  },
  /** The regions of a kept result at `threshold` (its map resampled onto the photo): for the
   * CSV export of a run. */
  regionsFor({ map, width, sourceWidth, sourceHeight, photo, threshold }) {
    const p = photo ?? toPhoto(map, width, sourceWidth || width, sourceHeight || width);
    return { width: p.width, height: p.height, regions: JSON.parse(regionsOf(p.map, p.width, p.height, threshold, 1)) };
  },
};

// Requests run one at a time, in order. Cancel messages act at once (outside the queue).
let queue = Promise.resolve();
onmessage = ({ data }) => {
  const { id, type, payload } = data;
  if (type === 'cancelFlag') {
    cancelFlag = new Int32Array(payload.buffer);
    return;
  }
  if (type === 'cancel') {
    cancelledUpTo = Math.max(cancelledUpTo, payload.upTo);
    return;
  }
  queue = queue.then(async () => {
    currentId = CANCELLABLE.has(type) ? id : 0;
    try {
      if (dead) throw new Error(`the detector stopped: ${dead.error}`);
      await ready;
      checkCancel();
      const handler = handlers[type];
      if (!handler) throw new Error(`unknown request ${type}`);
      const result = await handler(payload ?? {});
      checkCancel();
      // Only freshly rendered pixels are transferred; maps stay usable here for overlays.
      const transfer = result?.rgba ? [result.rgba.buffer] : [];
      postMessage({ id, ok: true, result }, transfer);
    } catch (e) {
      reportTrap(e, type, id);
      // A cancel seen inside wasm (blockCheck) comes back as wasm's error carrying its message.
      const cancelled = e instanceof CancelledError || isCancelled();
      postMessage({ id, ok: false, cancelled, error: cancelled ? 'cancelled' : (e?.message ?? String(e)) });
    } finally {
      currentId = 0;
    }
  });
};
