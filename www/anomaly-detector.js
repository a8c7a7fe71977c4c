// <anomaly-detector category="bottle" mode="fast" model="…" dtype="q8" src="image.png" threshold="0.5">
//
// An embeddable anomaly detector. Load it with one module script (or `import 'anoscope/element'`
// from the npm package):
//   <script type="module" src="https://your.site/anoscope/anomaly-detector.js"></script>
// The element owns its own detector worker (WebAssembly, all on the user's machine). The user
// drops, pastes or picks an image (or `src` names one); the element shows the result as the page
// does (photo-view.js): the photo at its own size and aspect with the heat map as a layer
// (opacity slider, overlay / original / side by side, zoom with wheel, pinch or buttons, pan by
// dragging), the defect regions outlined, numbered and listed. It fires
//   `anomaly-score`  CustomEvent, detail {score, verdict, threshold, map, width, height, name,
//                    photoWidth, photoHeight, regions, regionsWidth, regionsHeight}
//   `anomaly-error`  CustomEvent, detail {message}
//   `anomaly-ready`  CustomEvent, detail {threads, notice, model, weightsUrl, learned, dtype, int8,
//                    backend} once the model is loaded (learned: {mode, imageSize} when a
//                    learned file came with it)
// and exposes `.score`, `.map` (Float32Array, row-major width × height, values in [0, 1]: the map
// on the model's square input), `.mapWidth`, `.mapHeight`, `.regions`, `.load()` (starts loading
// now) and `.detect(blobOrFile)` (a Promise of the event detail). `regions` (at `threshold`,
// highest peak first) are {bbox: [x, y, w, h], area_px, area_pct, peak, mean, peak_xy} in pixels
// of the photo as drawn (regionsWidth × regionsHeight: the photo's size, or its copy bounded to
// 4096 px on the long side).
//
// First paint never waits for the model: the drop zone shows at once, and the worker, the wasm
// and the weights load on first use (`loading="interaction"`, the default: pointer over it, focus,
// a drag, a drop, a paste), when it scrolls into view (`loading="visible"`, the default when `src`
// is set) or at once (`loading="eager"`), with a progress bar.
//
// `model` (see api.js resolveModel): a URL of a checkpoint folder, `…/models.json#name`, or a name
// in the site's models.json or the package's manifest. Without it: the first real checkpoint of a
// models.json next to this file (a site built by ./build.sh; its interface test model when it
// serves no other), else the manifest's smallest pinned checkpoint. `dtype` ("q8" | "f16" | "f32";
// read when the model loads) picks the variant of a models.json entry: q8 (int8 image tower:
// faster on the CPU, smaller) or the f16 reference; without it the entry's default (q8 on the CPU
// where offered, the reference with WebGPU). For a folder URL or a manifest name the file must be
// of that type (checked on its header). `assets-base` (or the
// `assetsBase` property) names the folder of the package's files when they are not next to this
// module.
//
// `mode`: fast (default), winclip, or a learned mode, anomalyclip or adaptclip (zero-shot), which
// scores with a learned file (`anoscope convert --learned FILE.pth --model DIR` writes it for the
// checkpoint): `learned="…/learned.safetensors"` (optional `learned-sha256`, checked, and
// `learned-size`, the side images are resized to; default 518, the official size), else the one
// the model's models.json entry lists, else `learned.safetensors` (and `learned.json`) in the
// model's folder. It is downloaded with the model when the element starts in a learned mode,
// else when a learned mode first scores.
import { Detector, LEARNED_MODES, PACKAGED, assetsBaseOf, checkDtype, learnedOfFolder, resolveModel } from './api.js';
import { servedModels, verdict } from './common.js';
import { PhotoView, buildPhotoView } from './photo-view.js';

/**
 * The element's stylesheet: a <link> to its file, or, where a bundler inlined the small file as a
 * data: URL (which a strict CSP's style-src 'self' refuses), a constructed sheet adopted by the
 * shadow root (CSSOM, not subject to style-src). Returns the node to append (or an empty text node).
 */
function stylesheet(root, href) {
  const m = /^data:text\/css(;charset=[^;,]*)?(;base64)?,(.*)$/s.exec(href);
  if (!m) {
    const link = document.createElement('link');
    link.rel = 'stylesheet';
    link.href = href;
    return link;
  }
  const text = m[2] ? new TextDecoder().decode(Uint8Array.from(atob(m[3]), (c) => c.charCodeAt(0))) : decodeURIComponent(m[3]);
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(text);
  root.adoptedStyleSheets = [...root.adoptedStyleSheets, sheet];
  return document.createTextNode('');
}

class AnomalyDetector extends HTMLElement {
  static get observedAttributes() {
    return ['category', 'mode', 'threshold', 'src', 'loading', 'learned', 'learned-sha256', 'learned-size'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    // Literal new URL(…, import.meta.url): bundlers and the package's assembler find the files.
    const css = [
      stylesheet(root, new URL('photo-view.css', import.meta.url).href),
      stylesheet(root, new URL('anomaly-detector.css', import.meta.url).href),
    ];
    this.$zone = document.createElement('label');
    this.$zone.className = 'zone';
    this.$zone.tabIndex = 0;
    this.$zone.setAttribute('part', 'zone');
    this.$input = document.createElement('input');
    this.$input.type = 'file';
    this.$input.accept = 'image/*';
    this.$hint = document.createElement('span');
    this.$hint.textContent = 'Drop, paste or pick an image to check it for anomalies.';
    this.$zone.append(this.$hint, this.$input);
    this.$progress = document.createElement('progress');
    this.$progress.setAttribute('part', 'progress');
    this.$progress.hidden = true;
    this.$notice = document.createElement('p');
    this.$notice.className = 'notice';
    this.$notice.setAttribute('part', 'notice');
    this.$status = document.createElement('p');
    this.$status.setAttribute('role', 'status');
    this.$status.setAttribute('part', 'status');
    // The result view (photo-view.js), the page's: hidden until the first result.
    this.$view = buildPhotoView(document);
    this.$result = document.createElement('div');
    this.$result.className = 'result';
    this.$result.setAttribute('part', 'result');
    this.$result.hidden = true;
    this.$result.append(this.$view.controls, this.$view.resultView);
    this.$photoView = new PhotoView(this.$view, { regionsBeside: false, maxHeight: () => Math.min(window.innerHeight * 0.7, 640) });
    root.append(...css, this.$zone, this.$progress, this.$status, this.$notice, this.$result);
    this.score = null;
    this.regions = [];
    this.map = null;
    this.mapWidth = 0;
    this.mapHeight = 0;
    this.ready = null;
    this.assetsBase ??= null; // kept when a page set it before the element was defined
  }

  /** How loading starts: 'interaction' (first use), 'visible' (scrolled into view) or 'eager'. */
  get loading() {
    const v = this.getAttribute('loading');
    if (v === 'eager' || v === 'visible' || v === 'interaction') return v;
    return this.getAttribute('src') ? 'visible' : 'interaction';
  }

  /** Starts the worker, the wasm and the model now (once); resolves when the model is loaded. */
  load() {
    if (!this.client) throw new Error('the element is not in a document');
    if (!this.ready) {
      const ready = this.#start();
      this.ready = ready;
      // A failed load (offline, a wrong model URL) is tried again on the next use.
      ready.catch(() => {
        if (this.ready !== ready) return;
        this.detector?.close();
        this.detector = null;
        this.client = { pending: true };
        this.ready = null;
      });
    }
    return this.ready;
  }

  #watchForUse() {
    this.observer?.disconnect();
    this.observer = null;
    const mode = this.loading;
    if (mode === 'eager') {
      this.load();
    } else if (mode === 'visible' && typeof IntersectionObserver === 'function') {
      this.observer = new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) {
          this.observer?.disconnect();
          this.load();
        }
      });
      this.observer.observe(this);
    }
    // Any use starts it whatever the mode (a drop or paste also scores, below).
    const use = () => this.client && this.load();
    for (const type of ['pointerenter', 'focusin', 'dragenter', 'touchstart']) {
      this.addEventListener(type, use, { once: true, passive: true });
    }
  }

  connectedCallback() {
    if (this.client) return;
    this.client = { pending: true }; // the detector starts on use (see #watchForUse and load)
    this.#watchForUse();
    if (this.getAttribute('src')) {
      // Scored once loaded, whenever that is (loading="visible" by default with src).
      this.#loaded().then(
        () => this.#detectSrc(),
        () => {},
      );
    }
    this.$input.addEventListener('change', () => {
      const [f] = this.$input.files;
      this.$input.value = '';
      if (f) this.detect(f).catch(() => {});
    });
    this.addEventListener('dragover', (ev) => ev.preventDefault());
    this.addEventListener('drop', (ev) => {
      ev.preventDefault();
      ev.stopPropagation();
      const f = ev.dataTransfer?.files?.[0];
      if (f) this.detect(f).catch(() => {});
    });
    this.addEventListener('paste', (ev) => {
      const f = ev.clipboardData?.files?.[0];
      if (f) {
        ev.preventDefault();
        this.detect(f).catch(() => {});
      }
    });
  }

  disconnectedCallback() {
    this.observer?.disconnect();
    this.detector?.close();
    this.detector = null;
    this.client = null;
    this.ready = null;
  }

  /** Resolves when load() has been called and finished (without starting it). */
  #loaded() {
    if (this.ready) return this.ready;
    return new Promise((resolve, reject) => {
      this.addEventListener('anomaly-ready', resolve, { once: true });
      this.addEventListener('anomaly-load-failed', reject, { once: true });
    });
  }

  attributeChangedCallback(name, old, value) {
    // The first `src` is scored once the model is loaded (connectedCallback); later changes here.
    if (name === 'src' && value && old !== null && old !== value && this.client) this.#detectSrc();
    if (name === 'loading' && old !== value && this.client && !this.ready) this.#watchForUse();
  }

  async #start() {
    const base = assetsBaseOf(this.assetsBase ?? this.getAttribute('assets-base'));
    this.$status.className = '';
    this.$progress.hidden = false;
    this.$progress.removeAttribute('value');
    this.$status.textContent = 'Loading the anomaly detector…';
    const detector = new Detector({ assetsBase: base, onProgress: (p) => this.#progress(p) });
    this.detector = detector;
    this.client = detector.client;
    try {
      const info = await detector.start();
      this.$notice.textContent = info.notice;
      const spec = await this.#spec(base, detector);
      this.modelSpec = spec;
      this.folderLearned = null;
      // A learned mode's file comes with the model (before the GPU takes the image tower).
      const learned = LEARNED_MODES.includes(this.getAttribute('mode')) ? await this.#learnedSource() : null;
      this.$status.textContent = `Loading ${spec.label}…`;
      this.modelInfo = await detector.load(spec, { learned: learned ?? false });
      this.learnedKey = learned ? JSON.stringify(learned) : null;
      this.$progress.hidden = true;
      this.$status.textContent = '';
      // A q8 model: the notice says so, and where its image tower runs (the worker's label names
      // int8 while it runs in int8). Other models keep the plain notice.
      const backend = detector.backend?.label ?? info.backend;
      if (this.modelInfo.dtype === 'q8') this.$notice.textContent = `${info.notice} ${spec.label}: q8 weights, ${backend}.`;
      this.$hint.textContent = `Drop, paste or pick an image to check it for anomalies${
        spec.test ? ' (interface test model: random weights, meaningless scores)' : ''
      }.`;
      const detail = {
        threads: info.threads,
        notice: info.notice,
        model: spec.label,
        weightsUrl: spec.weightsUrl,
        learned: this.modelInfo.learned ?? null,
        dtype: this.modelInfo.dtype ?? null,
        int8: !!this.modelInfo.int8,
        backend,
      };
      this.dispatchEvent(new CustomEvent('anomaly-ready', { detail, bubbles: true, composed: true }));
    } catch (e) {
      this.$progress.hidden = true;
      this.#fail(e);
      this.dispatchEvent(new CustomEvent('anomaly-load-failed', { detail: { message: e?.message ?? String(e) } }));
      throw e;
    }
  }

  /** The load spec for the `model` and `dtype` attributes (see the header). */
  async #spec(base, detector) {
    const want = this.getAttribute('model');
    const opts = { assetsBase: base, dtype: checkDtype(this.getAttribute('dtype')), gpu: !!detector.backend?.gpuWanted };
    const isUrl = want && (/^(https?:|\.{0,2}\/)/.test(want) || want.includes('/'));
    if (!isUrl && !PACKAGED) {
      // A site built by ./build.sh serves models.json next to the element.
      const served = await servedModels(base);
      const m = want
        ? served.find((x) => x.name === want || x.variants?.some((v) => v.name === want))
        : (served.find((x) => !x.test) ?? served[0]);
      if (m) return resolveModel(`${new URL('models.json', base).href}#${encodeURIComponent(want || m.name)}`, opts);
    }
    return resolveModel(want, opts);
  }

  /** The learned file for the learned modes (see the header): {url, sha256, imageSize}, or null. */
  async #learnedSource() {
    const spec = this.modelSpec;
    const sizeAttr = this.getAttribute('learned-size');
    let imageSize;
    if (sizeAttr !== null && sizeAttr.trim() !== '') {
      imageSize = Number(sizeAttr);
      if (!Number.isInteger(imageSize) || imageSize < 1 || imageSize > 4096) {
        throw new Error(`learned-size must be a whole number of pixels from 1 to 4096, got “${sizeAttr}”`);
      }
    }
    const url = this.getAttribute('learned');
    if (url) {
      return {
        url: new URL(url, document.baseURI).href,
        sha256: this.getAttribute('learned-sha256') || undefined,
        imageSize,
      };
    }
    if (spec?.learnedUrl) return { url: spec.learnedUrl, sha256: spec.learnedSha256, imageSize: imageSize ?? spec.learnedImageSize };
    if (spec?.source === 'folder') {
      // learned.json is read once per model (scoring makes no request after that).
      this.folderLearned ??= learnedOfFolder(new URL('./', spec.configUrl).href);
      const l = await this.folderLearned;
      return { url: l.url, sha256: undefined, imageSize: imageSize ?? l.imageSize };
    }
    return null;
  }

  /** Loads the learned file a learned `mode` scores with, unless it is the one loaded. */
  async #ensureLearned(mode) {
    if (!LEARNED_MODES.includes(mode)) return;
    const src = await this.#learnedSource();
    const key = src ? JSON.stringify(src) : null;
    if (!src || key === this.learnedKey) return; // checkMode says what is missing or wrong
    this.$status.textContent = 'Loading the learned file…';
    this.modelInfo.learned = null;
    this.learnedKey = null;
    await this.detector.loadLearned(src.url, src);
    this.learnedKey = key;
  }

  #progress({ done, total, label }) {
    if (!this.ready || this.modelInfo) return;
    if (total > 0) {
      this.$progress.max = total;
      this.$progress.value = Math.min(done, total);
    } else {
      this.$progress.removeAttribute('value');
    }
    if (label) this.$status.textContent = `Loading: ${label}${total > 1 ? ` (${Math.round((100 * done) / total)} %)` : ''}…`;
  }

  async #detectSrc() {
    try {
      const res = await fetch(new URL(this.getAttribute('src'), document.baseURI));
      if (!res.ok) throw new Error(`could not fetch ${this.getAttribute('src')}: HTTP ${res.status}`);
      await this.detect(new File([await res.blob()], this.getAttribute('src').split('/').pop()));
    } catch (e) {
      this.#fail(e);
    }
  }

  #fail(e) {
    const message = e?.message ?? String(e);
    this.$status.textContent = message;
    this.$status.className = 'error';
    this.dispatchEvent(new CustomEvent('anomaly-error', { detail: { message }, bubbles: true, composed: true }));
  }

  /** Draws a result: the photo (the model's input when the browser cannot decode it) at the
   * layer's size, the heat layer `o` and its regions. */
  async #draw(blob, r, o) {
    let bmp = await createImageBitmap(blob).catch(() => null);
    if (!bmp && r.input) bmp = await createImageBitmap(new ImageData(new Uint8ClampedArray(r.input), r.width, r.height));
    this.$result.hidden = false;
    this.$photoView.drawPhoto(bmp, o.width, o.height);
    bmp?.close();
    this.$photoView.drawLayer(o.rgba, o.width, o.height);
    this.$photoView.drawRegions({ width: o.width, height: o.height, list: o.regions });
    this.$photoView.setOpacity(Number(this.$view.opacity.value));
    this.$view.photo.dataset.photoWidth = String(r.sourceWidth);
    this.$view.photo.dataset.photoHeight = String(r.sourceHeight);
  }

  /** Scores one image (Blob or File); resolves to the `anomaly-score` detail. */
  async detect(blob) {
    await this.load();
    const mode = this.getAttribute('mode') || 'fast';
    const threshold = Number(this.getAttribute('threshold') ?? 0.5);
    this.$status.className = '';
    try {
      await this.#ensureLearned(mode);
      this.detector.checkMode(mode);
      this.$status.textContent = 'Scoring…';
      const r = await this.client.call('detect', {
        mode,
        file: { name: blob.name || 'image', bytes: await blob.arrayBuffer() },
        text: { category: this.getAttribute('category') || 'object' },
      });
      const o = await this.client.call('overlay', { threshold });
      await this.#draw(blob, r, o);
      this.score = r.score;
      this.map = r.map;
      this.mapWidth = r.width;
      this.mapHeight = r.height;
      this.regions = o.regions;
      const v = verdict(r.score, threshold);
      const n = o.regions.length;
      const text =
        `Anomaly score ${r.score.toFixed(3)}: ${v} at threshold ${threshold}` +
        (n ? `; ${n} region${n === 1 ? '' : 's'} at or above it.` : '.');
      this.$status.textContent = text;
      this.$view.overlay.setAttribute('aria-label', `Anomaly heatmap over the photo. ${text}`);
      const detail = {
        score: r.score,
        verdict: v,
        threshold,
        map: r.map,
        width: r.width,
        height: r.height,
        name: blob.name,
        photoWidth: r.sourceWidth,
        photoHeight: r.sourceHeight,
        regions: o.regions,
        regionsWidth: o.width,
        regionsHeight: o.height,
      };
      this.dispatchEvent(new CustomEvent('anomaly-score', { detail, bubbles: true, composed: true }));
      return detail;
    } catch (e) {
      this.#fail(e);
      throw e;
    }
  }
}

if (!customElements.get('anomaly-detector')) customElements.define('anomaly-detector', AnomalyDetector);
export { AnomalyDetector };
