// Helpers shared by the page, the worker and the embeddable element.

/** Cache API bucket for checkpoint files (served, downloaded from the manifest, verified). */
export const WEIGHTS_CACHE = 'anoscope-weights-v1';

/** Lower-case hex sha256 of bytes (Web Crypto). */
export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A Response body as chunks (Uint8Arrays) as they arrive. A body longer than `maxBytes`, or
 * shorter than its Content-Length `total` (a truncated download), is an error.
 */
export async function* responseChunks(res, maxBytes = Infinity, total = Number(res.headers.get('content-length')) || 0) {
  if (!res.body) {
    yield new Uint8Array(await res.arrayBuffer());
    return;
  }
  const reader = res.body.getReader();
  let done = 0;
  let finished = false;
  try {
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch (e) {
        throw new Error(`the download broke off after ${done} of ${total || '?'} bytes (${e?.message ?? e})`);
      }
      if (step.done) break;
      done += step.value.byteLength;
      if (done > maxBytes) throw new Error(`the download exceeds ${maxBytes} bytes, the most the page accepts`);
      yield step.value;
    }
    finished = true;
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
  if (total && done !== total) throw new Error(`the download is truncated: got ${done} of ${total} bytes`);
}

/** Reads a Response body to a Uint8Array (see responseChunks), reporting (bytesDone, bytesTotal). */
export async function fetchWithProgress(res, onProgress, maxBytes = Infinity) {
  const total = Number(res.headers.get('content-length')) || 0;
  const chunks = [];
  let done = 0;
  let last = 0;
  for await (const chunk of responseChunks(res, maxBytes, total)) {
    chunks.push(chunk);
    done += chunk.byteLength;
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      onProgress(done, total);
    }
  }
  onProgress(done, total || done);
  const out = new Uint8Array(done);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** "12.3 MB" style sizes. */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

/** Promise-based request/response wrapper around the detector worker (its URL, or a started Worker). */
export class DetectorClient {
  constructor(url, { onProgress, onReady, onFatal, onBackend, onModel, onStorage } = {}) {
    this.worker = url instanceof Worker ? url : new Worker(url, { type: 'module' });
    this.pending = new Map();
    this.nextId = 1;
    this.ready = new Promise((resolve, reject) => {
      this.worker.onmessage = ({ data }) => {
        if (data.type === 'ready') {
          onReady?.(data);
          resolve(data);
        } else if (data.type === 'fatal') {
          onFatal?.(data.error, data);
          reject(new Error(data.error));
        } else if (data.type === 'progress') {
          onProgress?.(data);
        } else if (data.type === 'backend') {
          onBackend?.(data);
        } else if (data.type === 'model') {
          // The rest of a streamed checkpoint arrived and checked out (ok) or failed (error).
          onModel?.(data);
        } else if (data.type === 'storage') {
          // Whether a downloaded file was kept for offline use (or why not).
          onStorage?.(data);
        } else if (this.pending.has(data.id)) {
          const { resolve: ok, reject: fail } = this.pending.get(data.id);
          this.pending.delete(data.id);
          if (data.ok) ok(data.result);
          else fail(new Error(data.error));
        }
      };
      this.worker.onerror = (ev) => {
        const msg = `the detector worker failed: ${ev.message || 'script error'}`;
        onFatal?.(msg);
        reject(new Error(msg));
      };
    });
  }

  call(type, payload, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type, payload }, transfer);
    });
  }

  terminate() {
    this.worker.terminate();
    for (const { reject } of this.pending.values()) reject(new Error('the detector was stopped'));
    this.pending.clear();
  }
}

/** Plain-language verdict for a score at a threshold. */
export function verdict(score, threshold) {
  return score >= threshold ? 'anomalous' : 'normal';
}

/** The models the site serves (models.json written by build.sh), or an empty list. */
export async function servedModels(base) {
  try {
    const res = await fetch(new URL('models.json', base));
    if (!res.ok) return [];
    return (await res.json()).models ?? [];
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint variants: a model served as f16 (the reference) and q8 (anoscope convert --dtype q8:
// the image tower's block linear layers in int8, everything else f16; faster on the CPU, smaller).

/**
 * The variant the CPU path loads by default when a model offers it. 'q8': the int8 image tower
 * (smaller download; the int8 wasm GEMM makes it the faster one). Set it to 'f16' to make the
 * reference the default everywhere. With WebGPU the reference is always the default: the GPU
 * runs the image tower in f32 whichever file is loaded (a q8 file's int8 weights scaled back).
 */
export const CPU_DEFAULT_DTYPE = 'q8';

/** The dtypes a variant may have, and how the page names each. */
export const DTYPE_LABELS = {
  q8: 'q8 (faster, smaller)',
  f16: 'f16 (reference)',
  f32: 'f32 (reference)',
};

/**
 * How a safetensors header (the parsed JSON) stores its weights: 'q8' when it holds anoscope's
 * int8 tensors (a `NAME.q8_scales` beside each), else the float type most of its bytes are in
 * ('f16', 'f32', 'bf16'); null when it holds no float tensor.
 */
export function dtypeOfHeader(header) {
  const bytes = {};
  for (const [name, t] of Object.entries(header ?? {})) {
    if (name === '__metadata__') continue;
    if (name.endsWith('.q8_scales')) return 'q8';
    if (!/^(F16|F32|BF16)$/.test(t?.dtype)) continue;
    bytes[t.dtype] = (bytes[t.dtype] ?? 0) + (t.data_offsets?.[1] ?? 0) - (t.data_offsets?.[0] ?? 0);
  }
  const best = Object.entries(bytes).sort((a, b) => b[1] - a[1])[0];
  return best ? best[0].toLowerCase() : null;
}

/**
 * The variants of a models.json entry, the reference first: its `variants` (tests/browser/
 * site-index.mjs groups NAME-f16 and NAME-q8), else the entry itself as its only one.
 * Each: {dtype, name, configName, config, weights, prompts?, learned?}.
 */
export function variantsOf(m) {
  if (Array.isArray(m.variants) && m.variants.length) return m.variants;
  // The same objects on every call, so that variants compare by identity.
  let one = SINGLE_VARIANTS.get(m);
  if (!one) {
    const { dtype = null, name, configName, config, weights, prompts, learned } = m;
    one = [{ dtype, name, configName, config, weights, prompts, learned }];
    SINGLE_VARIANTS.set(m, one);
  }
  return one;
}
const SINGLE_VARIANTS = new WeakMap();

/** A variant's name on the page and in the API: a served folder's own name (NAME-f16, NAME-q8)
 * where the entry has several; the test model's label, with the dtype for its other variants. */
export function variantLabel(m, v) {
  const all = variantsOf(m);
  if (!m.test) return all.length > 1 ? v.name : (m.label ?? m.name);
  return v === all[0] ? m.label : `${m.label}, ${v.dtype}`;
}

/**
 * Which variant of models.json entry `m` to load: `want` ('q8', 'f16' or 'f32'; an error names
 * what the entry offers when it has no such variant), else the default: with WebGPU (`gpu`) the
 * reference; on the CPU CPU_DEFAULT_DTYPE where offered, else the reference. Returns
 * {variant, isDefault, why} (why: the default's reason, in a sentence).
 */
export function chooseVariant(m, { want, gpu = false } = {}) {
  const all = variantsOf(m);
  const fallback = chooseDefault(all, gpu);
  if (!want) return { ...fallback, isDefault: true };
  if (!DTYPE_LABELS[want]) throw new Error(`dtype “${want}” is not one of ${Object.keys(DTYPE_LABELS).join(', ')}`);
  const v = all.find((x) => x.dtype === want);
  if (!v) {
    throw new Error(
      `${m.label ?? m.name} has no ${want} variant (it offers ${all.map((x) => x.dtype ?? 'one file of unknown type').join(', ')})` +
        (want === 'q8' ? '; ./build.sh weights or anoscope convert --dtype q8 makes one' : ''),
    );
  }
  return { variant: v, isDefault: v === fallback.variant, why: fallback.why };
}

/** The default variant of `all` (reference first) and why, for chooseVariant. */
function chooseDefault(all, gpu) {
  const ref = all[0];
  const q8 = all.find((x) => x.dtype === 'q8' && x !== ref);
  if (!q8) return { variant: ref, why: '' };
  const pct = q8.weights?.size && ref.weights?.size ? Math.round(100 * (1 - q8.weights.size / ref.weights.size)) : null;
  const smaller = pct === null ? 'smaller' : `${pct} % smaller`;
  if (gpu) {
    return {
      variant: ref,
      why:
        `${ref.dtype} is the default with WebGPU: the GPU runs the image tower in f32 whichever file is loaded, ` +
        `so q8 would only make the download ${smaller}, at a small cost in accuracy.`,
    };
  }
  if (CPU_DEFAULT_DTYPE === 'q8') {
    return {
      variant: q8,
      why:
        `q8 is the default on the CPU: its image tower runs in int8, the faster path, and its download is ${smaller}; ` +
        `its scores stay within the bounds docs/speed.md states against the ${ref.dtype} reference.`,
    };
  }
  return { variant: ref, why: `${ref.dtype}, the reference, is the default; q8 is the smaller download.` };
}
