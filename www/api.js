// The detector as a JavaScript API (the npm package's main entry, `import … from 'anoscope'`):
//
//   import { createDetector } from 'anoscope';
//   const detector = await createDetector({ model: 'https://example.org/checkpoints/clip/' });
//   const { score, map, width, height } = await detector.detect(canvas, { category: 'bottle' });
//
// The element (anomaly-detector.js) is built on it. Everything runs in a module worker of this
// package (worker.js, WebAssembly); no image leaves the browser. The package's files (worker, wasm
// builds, build.json, manifest.json) are found next to this module (`new URL(…, import.meta.url)`),
// so it works from node_modules through a bundler, from a CDN path and self-hosted; `assetsBase`
// names another folder that holds them.
import { chooseVariant, DetectorClient, DTYPE_LABELS, variantLabel, verdict } from './common.js';

export { verdict };

/**
 * `dtype` as the API and the element take it: 'q8', 'f16' or 'f32' (the variant to load), or
 * undefined for the default ('auto' and '' mean the same). Anything else is an error.
 */
export function checkDtype(dtype) {
  if (dtype === undefined || dtype === null || dtype === '' || dtype === 'auto') return undefined;
  if (!DTYPE_LABELS[dtype]) {
    throw new Error(`dtype “${dtype}” is not one of q8, f16, f32 (or auto: the model's default variant)`);
  }
  return dtype;
}

/** The folder this module was loaded from: where the package's other files are. */
// (Not `new URL('./', import.meta.url)`: bundlers take that for an asset to emit.)
export const DEFAULT_ASSETS_BASE = import.meta.url.slice(0, import.meta.url.lastIndexOf('/') + 1);

// The worker and the single-threaded build, each named by a literal `new URL('./…', import.meta.url)`:
// a bundler (Vite, webpack 5, Parcel, esbuild with a loader) emits these files with the page's
// bundle and rewrites the URLs, so the package works from node_modules without copying anything.
// The package's worker.js is self-contained (its imports bundled in). The threaded build stays
// next to this module only (its glue imports its own helper by a relative path).
const WORKER_URL = new URL('./worker.js', import.meta.url).href;
const GLUE_URL = new URL('./pkg/anoscope.js', import.meta.url).href;
const WASM_URL = new URL('./pkg/anoscope_bg.wasm', import.meta.url).href;

/** A folder URL (always ending in '/') for `base`, resolved against the document. */
export function assetsBaseOf(base) {
  if (!base) return DEFAULT_ASSETS_BASE;
  const u = new URL(base, globalThis.document?.baseURI ?? DEFAULT_ASSETS_BASE);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.href;
}

/**
 * The detector worker. A page may start a worker only from its own origin; when the package is
 * served from another one (a CDN), a one-line module worker of this origin imports it instead
 * (the worker finds its files from its own module URL, not from its location).
 */
function startWorker(base) {
  let url = new URL('worker.js', base);
  // Bundled: the worker and the wasm are where the bundler put them, not next to each other.
  if (base === DEFAULT_ASSETS_BASE && WORKER_URL !== url.href) {
    url = new URL(WORKER_URL);
    url.searchParams.set('glue', GLUE_URL);
    url.searchParams.set('wasm', WASM_URL);
  }
  if (url.origin === globalThis.location?.origin) return new Worker(url, { type: 'module' });
  const shim = new Blob([`import ${JSON.stringify(url.href)};\n`], { type: 'text/javascript' });
  const blobUrl = URL.createObjectURL(shim);
  try {
    return new Worker(blobUrl, { type: 'module' });
  } finally {
    // The worker has fetched its script by the time it runs; a short delay keeps the URL valid until then.
    setTimeout(() => URL.revokeObjectURL(blobUrl), 60_000);
  }
}

// The npm package carries the weights manifest here (packages/anoscope/assemble.mjs writes it in);
// the site's copy of this file reads weights/manifest.json.
const EMBEDDED_MANIFEST = null;

/** True in the npm package (no site around it: no models.json, no weights/ folder). */
export const PACKAGED = EMBEDDED_MANIFEST !== null;

/**
 * The weights manifest (the repository's weights/manifest.json): checkpoints on Hugging Face,
 * pinned by sha256.
 */
export async function manifest(assetsBase) {
  if (EMBEDDED_MANIFEST) return EMBEDDED_MANIFEST;
  const base = assetsBaseOf(assetsBase);
  // The package ships it next to this module; a site built by ./build.sh serves it under weights/.
  let status = 0;
  for (const rel of ['manifest.json', 'weights/manifest.json']) {
    const res = await fetch(new URL(rel, base)).catch(() => null);
    if (res?.ok) return res.json();
    status ||= res?.status ?? 0;
  }
  throw new Error(`could not read the model manifest (manifest.json) in ${base}: ${status ? `HTTP ${status}` : 'unreachable'}`);
}

/** A manifest entry as a load spec; null when it has no config or weights, or they are not pinned. */
function specFromManifest(m) {
  const config = m.files?.find((f) => f.name.endsWith('.json'));
  const weights = m.files?.find((f) => f.name.endsWith('.safetensors') && !/prompts/.test(f.name));
  if (!config || !weights || !/^[0-9a-f]{64}$/.test(weights.sha256 ?? '')) return null;
  return {
    label: m.name,
    test: false,
    configName: config.name,
    configUrl: config.url,
    configSha256: config.sha256 ?? undefined,
    weightsUrl: weights.url,
    weightsSha256: weights.sha256,
    size: weights.size ?? undefined,
    source: 'manifest',
  };
}

/**
 * A models.json entry (as ./build.sh writes it for a site) as a load spec, URLs resolved against
 * `base`: its variant `dtype` (an error when it has none), else its default one (chooseVariant:
 * with WebGPU, `gpu`, the reference; on the CPU q8 where offered).
 */
function specFromServed(m, base, { dtype, gpu } = {}) {
  const url = (u) => new URL(u, base).href;
  const { variant: v } = chooseVariant(m, { want: dtype, gpu });
  const L = v.learned ?? m.learned;
  return {
    label: variantLabel(m, v),
    test: !!m.test,
    configName: v.configName,
    configUrl: url(v.config.url),
    configSha256: v.config.sha256,
    weightsUrl: url(v.weights.url),
    weightsSha256: v.weights.sha256,
    promptsUrl: v.prompts ? url(v.prompts.url) : undefined,
    promptsSha256: v.prompts?.sha256,
    dtype: v.dtype ?? undefined,
    // A learned file (AnomalyCLIP's prompts or AdaptCLIP's adapters): loaded with the model.
    learnedUrl: L ? url(L.url) : undefined,
    learnedSha256: L?.sha256,
    learnedImageSize: L?.imageSize,
    learnedMode: L?.mode,
    source: 'models.json',
  };
}

/** Whether `url` answers a HEAD (or a GET, for servers without HEAD) with 2xx. */
async function exists(url) {
  for (const method of ['HEAD', 'GET']) {
    try {
      const res = await fetch(url, { method, cache: 'no-cache' });
      if (method === 'GET') res.body?.cancel().catch(() => {});
      if (res.ok) return true;
      if (res.status !== 405 && res.status !== 501) return false;
    } catch {
      return false;
    }
  }
  return false;
}

/** A checkpoint folder (Hugging Face transformers or open_clip layout, optional prompts.safetensors). */
async function specFromFolder(folder) {
  const base = folder.endsWith('/') ? folder : `${folder}/`;
  for (const [configName, weightsName] of [
    ['config.json', 'model.safetensors'],
    ['open_clip_config.json', 'open_clip_model.safetensors'],
  ]) {
    if (!(await exists(new URL(configName, base)))) continue;
    const prompts = new URL('prompts.safetensors', base).href;
    return {
      label: decodeURIComponent(new URL(base).pathname.split('/').filter(Boolean).pop() ?? base),
      test: false,
      configName,
      configUrl: new URL(configName, base).href,
      weightsUrl: new URL(weightsName, base).href,
      promptsUrl: (await exists(prompts)) ? prompts : undefined,
      source: 'folder',
    };
  }
  throw new Error(
    `no checkpoint at ${base}: neither config.json nor open_clip_config.json could be fetched there ` +
      '(a checkpoint folder holds config.json + model.safetensors, or open_clip_config.json + open_clip_model.safetensors, ' +
      'served with CORS when it is on another origin)',
  );
}

/**
 * The manifest's default for an embedded detector: the smallest pinned checkpoint (by published
 * size; where sizes are not published, the manifest's own default, then its order).
 */
export function defaultManifestModel(man) {
  const specs = (man.models ?? []).map(specFromManifest).filter(Boolean);
  const rank = (s) => [s.size ?? Infinity, s.label === man.default ? 0 : 1];
  specs.sort((a, b) => {
    const [x, y] = [rank(a), rank(b)];
    return x[0] - y[0] || x[1] - y[1];
  });
  return specs[0] ?? null;
}

/**
 * What `model` names, as a load spec for the worker:
 *  - a URL ending in `models.json` with `#name` (a site's models.json entry; without #name its first real one),
 *  - another URL: a checkpoint folder (relative URLs resolve against the document),
 *  - a name: an entry of the package's manifest.json (Hugging Face, sha256-pinned),
 *  - nothing: the manifest's smallest pinned checkpoint.
 * `dtype` ('q8', 'f16', 'f32'): a models.json entry's variant of that type (its default
 * otherwise: `gpu`, the image tower to run on WebGPU, makes it the reference; on the CPU q8 where
 * offered); a folder's or the manifest's file must be of that type (the worker checks its header
 * before reading the rest).
 */
export async function resolveModel(model, { assetsBase, dtype, gpu = false } = {}) {
  dtype = checkDtype(dtype);
  const base = assetsBaseOf(assetsBase);
  const want = (model ?? '').trim();
  const isUrl = /^(https?:|\.{0,2}\/)/.test(want) || want.includes('/');
  if (want && isUrl) {
    const u = new URL(want, globalThis.document?.baseURI ?? base);
    if (/models\.json$/.test(u.pathname)) {
      const name = decodeURIComponent(u.hash.slice(1));
      u.hash = '';
      const res = await fetch(u).catch((e) => {
        throw new Error(`could not fetch ${u.href}: ${e?.message ?? e}`);
      });
      if (!res.ok) throw new Error(`could not fetch ${u.href}: HTTP ${res.status}`);
      const models = (await res.json()).models ?? [];
      // A name is an entry's, or one of its variants' (NAME-q8: that variant unless dtype says otherwise).
      const m = name
        ? models.find((x) => x.name === name || x.variants?.some((v) => v.name === name))
        : (models.find((x) => !x.test) ?? models[0]);
      if (m && name && m.name !== name) dtype ??= m.variants.find((v) => v.name === name).dtype;
      if (!m) {
        throw new Error(
          `${u.href} lists no model${name ? ` named “${name}”` : ''} (it lists: ${models.map((x) => x.name).join(', ') || 'none'})`,
        );
      }
      return specFromServed(m, u.href, { dtype, gpu });
    }
    return { ...(await specFromFolder(u.href)), dtype };
  }
  const man = await manifest(base);
  if (want) {
    const entry = man.models?.find((m) => m.name === want);
    if (!entry) {
      throw new Error(
        `model “${want}” is neither a URL nor a name in the manifest (it lists: ${(man.models ?? []).map((m) => m.name).join(', ')})`,
      );
    }
    const spec = specFromManifest(entry);
    if (!spec) throw new Error(`the manifest's ${want} is not pinned by sha256: it is never downloaded`);
    return { ...spec, dtype };
  }
  const spec = defaultManifestModel(man);
  if (!spec) throw new Error('the manifest lists no pinned checkpoint; give the detector a model="…" URL');
  return { ...spec, dtype };
}

/** The modes that score with a learned file (anoscope convert --learned) instead of prompts. */
export const LEARNED_MODES = Object.freeze(['anomalyclip', 'adaptclip']);
/** The modes detect() runs. */
export const MODES = Object.freeze(['fast', 'winclip', ...LEARNED_MODES]);
const LEARNED_WHAT = { anomalyclip: "AnomalyCLIP's learned prompts", adaptclip: "AdaptCLIP's learned adapters" };

/**
 * The learned file of a checkpoint folder, as a served folder holds it: `learned.safetensors`,
 * and its input size from `learned.json` (`{"imageSize": N}`) when there is one (else the
 * official 518). Resolves to {url, imageSize} (nothing is downloaded but learned.json).
 */
export async function learnedOfFolder(folder) {
  const base = new URL(folder, globalThis.document?.baseURI ?? DEFAULT_ASSETS_BASE);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const res = await fetch(new URL('learned.json', base)).catch(() => null);
  const side = res?.ok ? await res.json().catch(() => null) : null;
  return { url: new URL('learned.safetensors', base).href, imageSize: Number(side?.imageSize) || undefined };
}

/** `learned` (a URL, or {url, sha256, imageSize}) as the load spec's fields, the URL resolved against the document. */
function learnedFields(learned) {
  const l = typeof learned === 'object' && !(learned instanceof URL) ? learned : { url: learned };
  if (!l?.url) throw new TypeError('a learned file is given as a URL or {url, sha256, imageSize}');
  return {
    learnedUrl: new URL(String(l.url), globalThis.document?.baseURI ?? DEFAULT_ASSETS_BASE).href,
    learnedSha256: l.sha256 || undefined,
    learnedImageSize: l.imageSize || undefined,
    learnedMode: undefined,
  };
}

/** A learned file's name for messages: the last part of its URL. */
function learnedName(url) {
  try {
    return decodeURIComponent(new URL(url).pathname.split('/').pop()) || url;
  } catch {
    return String(url);
  }
}

/** Pixels of an image-like input as {data, width, height} (RGBA), or null for encoded bytes. */
function rgbaOf(input) {
  if (typeof ImageData !== 'undefined' && input instanceof ImageData) {
    return { data: input.data.slice().buffer, width: input.width, height: input.height };
  }
  const drawable =
    (typeof HTMLCanvasElement !== 'undefined' && input instanceof HTMLCanvasElement) ||
    (typeof OffscreenCanvas !== 'undefined' && input instanceof OffscreenCanvas) ||
    (typeof ImageBitmap !== 'undefined' && input instanceof ImageBitmap) ||
    (typeof HTMLImageElement !== 'undefined' && input instanceof HTMLImageElement) ||
    (typeof HTMLVideoElement !== 'undefined' && input instanceof HTMLVideoElement);
  if (!drawable) return null;
  const width = input.naturalWidth || input.videoWidth || input.width;
  const height = input.naturalHeight || input.videoHeight || input.height;
  if (!width || !height) throw new Error('the image to score has no pixels yet (width or height is 0)');
  let ctx;
  if ((typeof HTMLCanvasElement !== 'undefined' && input instanceof HTMLCanvasElement) || input instanceof OffscreenCanvas) {
    ctx = input.getContext('2d', { willReadFrequently: true });
  }
  if (!ctx) {
    const c = new OffscreenCanvas(width, height);
    ctx = c.getContext('2d');
    ctx.drawImage(input, 0, 0);
  }
  const d = ctx.getImageData(0, 0, width, height);
  return { data: d.data.buffer, width, height };
}

/** One detector: a worker with the WebAssembly module and one model. Made by createDetector. */
export class Detector {
  /** @param {{assetsBase?: string, onProgress?: Function, dtype?: string}} options */
  constructor({ assetsBase, onProgress, dtype } = {}) {
    this.assetsBase = assetsBaseOf(assetsBase);
    this.onProgress = onProgress;
    /** The variant load() asks for ('q8', 'f16', 'f32'; undefined: the model's default). */
    this.dtype = checkDtype(dtype);
    this.client = new DetectorClient(startWorker(this.assetsBase), {
      onProgress: (p) => this.onProgress?.(p),
      onModel: (m) => {
        if (!m.ok) this.modelError = m.error;
      },
      // The backend label changes with the model (", int8" while a q8 image tower runs in int8).
      onBackend: (b) => {
        this.backend = b;
        if (this.info) this.info.backend = b.label;
      },
    });
    this.model = null;
    this.modelError = null;
    /** {threads, backend, version, crossOriginIsolated, notice} once the module runs. */
    this.info = null;
  }

  /** Starts the WebAssembly module; resolves to `info`. */
  async start() {
    const r = await this.client.ready;
    this.backend = r.backend;
    const isolated = !!globalThis.crossOriginIsolated;
    this.info = {
      version: r.version,
      threads: r.threads,
      backend: r.backend?.label,
      crossOriginIsolated: isolated,
      notice:
        r.threads > 1
          ? `Running on ${r.threads} threads (this page is cross-origin isolated).`
          : isolated
            ? `Running on one thread (${r.backend?.label ?? 'CPU'}).`
            : 'Single-threaded: this page is not cross-origin isolated (no COOP/COEP headers).',
    };
    return this.info;
  }

  /**
   * Loads a model (see resolveModel for what `model` may be; `dtype`, default the detector's,
   * picks its variant); resolves to the worker's model info ({label, dtype, int8, …; `learned`:
   * {mode, imageSize} when a learned file came with it}). `options.learned` (a URL or
   * {url, sha256, imageSize}) loads that learned file with the model, in place of the one its
   * models.json entry lists; `learned: false` loads none.
   */
  async load(model, { learned, dtype = this.dtype } = {}) {
    if (!this.info) await this.start();
    let spec =
      typeof model === 'object' && model
        ? model
        : await resolveModel(model, { assetsBase: this.assetsBase, dtype, gpu: !!this.backend?.gpuWanted });
    if (learned === false) spec = { ...spec, learnedUrl: undefined, learnedSha256: undefined, learnedImageSize: undefined, learnedMode: undefined };
    else if (learned) spec = { ...spec, ...learnedFields(learned) };
    this.modelError = null;
    try {
      this.model = await this.client.call('load', spec);
    } catch (e) {
      const host = (() => {
        try {
          return new URL(spec.weightsUrl).host;
        } catch {
          return spec.weightsUrl;
        }
      })();
      const why = e?.message ?? String(e);
      throw new Error(
        /Failed to fetch|NetworkError|Load failed/i.test(why)
          ? `could not download ${spec.label} from ${host} (${why}): the network or the server's CORS refuses it. ` +
              'Host the checkpoint next to your page and point model="…" at its folder.'
          : `could not load ${spec.label}: ${why}`,
      );
    }
    this.spec = spec;
    return this.model;
  }

  /**
   * Loads a learned file for the loaded model, for mode 'anomalyclip' or 'adaptclip' (zero-shot):
   * what `anoscope convert --learned FILE.pth --model DIR --out learned.safetensors` writes for
   * this checkpoint. `source`: a URL (downloaded; with `sha256` checked and kept for offline
   * use), a Blob/File, or bytes. `imageSize`: the side images are resized to in that mode
   * (default 518, the official size). Resolves to {mode, imageSize}. A file that is not a learned
   * file, or one converted for another checkpoint, is refused with the reason; the model and the
   * learned file loaded before stay.
   */
  async loadLearned(source, { sha256, imageSize } = {}) {
    if (!this.model) throw new Error('no model is loaded: call load() first (createDetector does)');
    let payload;
    let what;
    if (typeof Blob !== 'undefined' && source instanceof Blob) {
      what = source.name || '';
      payload = { bytes: await source.arrayBuffer(), imageSize, name: what };
    } else if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
      what = '';
      const view = source instanceof ArrayBuffer ? new Uint8Array(source) : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
      payload = { bytes: view.slice().buffer, imageSize, name: what };
    } else if (source) {
      const { learnedUrl: url } = learnedFields({ url: source });
      what = url;
      payload = { url, sha256, imageSize, name: `learned file ${learnedName(url)}` };
    } else {
      throw new TypeError('loadLearned() takes a URL, a Blob/File or bytes');
    }
    let r;
    try {
      r = await this.client.call('loadLearned', payload);
    } catch (e) {
      const why = e?.message ?? String(e);
      throw new Error(
        /Failed to fetch|NetworkError|Load failed/i.test(why)
          ? `could not download the learned file ${what} (${why}): the network or the server's CORS refuses it`
          : `could not load the learned file${what ? ` ${what}` : ''} for ${this.model.label}: ${why}`,
      );
    }
    this.model.learned = r.learned;
    return r.learned;
  }

  /** Throws the reason `mode` cannot score with the loaded model (an unknown mode, a learned mode without its file). */
  checkMode(mode) {
    if (!this.model) throw new Error('no model is loaded: call load() first (createDetector does)');
    if (!MODES.includes(mode)) throw new Error(`mode “${mode}” is not available here (${MODES.join(', ')})`);
    if (!LEARNED_MODES.includes(mode)) return;
    const l = this.model.learned;
    if (!l) {
      throw new Error(
        `mode “${mode}” needs a learned file (${LEARNED_WHAT[mode]}, as anoscope convert --learned FILE.pth --model DIR ` +
          `writes it for this checkpoint), and none is loaded for ${this.model.label}: give one (learned="…/learned.safetensors", ` +
          'loadLearned(url)) or use a models.json entry that lists one',
      );
    }
    if (l.mode !== mode) {
      throw new Error(
        `mode “${mode}” needs ${LEARNED_WHAT[mode]}, but the learned file loaded for ${this.model.label} holds ` +
          `${LEARNED_WHAT[l.mode] ?? l.mode}: use mode “${l.mode}”, or load ${mode}'s file`,
      );
    }
  }

  /**
   * Scores one image: a Blob/File (PNG, JPEG, WebP …), ImageData, a canvas, an ImageBitmap, an
   * <img> or a <video> frame. options: {category = 'object', mode = 'fast' | 'winclip' |
   * 'anomalyclip' | 'adaptclip' (these two need the model's learned file: load(model, {learned}),
   * loadLearned; `category` is then not used), threshold = 0.5}. Resolves to {score, verdict,
   * threshold, map (Float32Array, width × height, in [0, 1]; a learned mode's at its own size), width, height, ms}.
   */
  async detect(input, { category = 'object', mode = 'fast', threshold = 0.5, name } = {}) {
    this.checkMode(mode);
    const rgba = rgbaOf(input);
    let payload;
    if (rgba) {
      payload = { mode, rgba, text: { category } };
    } else if (typeof Blob !== 'undefined' && input instanceof Blob) {
      payload = { mode, file: { name: name ?? input.name ?? 'image', bytes: await input.arrayBuffer() }, text: { category } };
    } else {
      throw new TypeError('detect() takes a Blob/File, ImageData, a canvas, an ImageBitmap, an <img> or a <video>');
    }
    const r = await this.client.call('detect', payload, rgba ? [rgba.data] : []);
    return {
      score: r.score,
      verdict: verdict(r.score, threshold),
      threshold,
      map: r.map,
      width: r.width,
      height: r.height,
      ms: r.ms,
      name: payload.file?.name,
    };
  }

  /** The last result drawn as an RGBA heatmap over the image: {rgba, width, height}. */
  overlay({ threshold = 0.5 } = {}) {
    return this.client.call('overlay', { opacity: 0.5, threshold });
  }

  /** Stops the worker (and frees its memory). */
  close() {
    this.client.terminate();
  }
}

/**
 * A ready detector: starts the module and loads `model` (default: the manifest's smallest pinned
 * checkpoint). options: {model, dtype ('q8' | 'f16' | 'f32': the variant; default the model's:
 * q8 on the CPU where a site's models.json offers it, the reference with WebGPU), learned (a
 * learned file's URL or {url, sha256, imageSize}, for the modes anomalyclip and adaptclip; see
 * Detector.load), assetsBase, onProgress({stage, done, total, label})}.
 */
export async function createDetector({ model, dtype, learned, assetsBase, onProgress } = {}) {
  const d = new Detector({ assetsBase, onProgress, dtype });
  try {
    await d.start();
    await d.load(model, { learned });
  } catch (e) {
    d.close();
    throw e;
  }
  return d;
}
