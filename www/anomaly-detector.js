// <anomaly-detector category="bottle" mode="fast" model="NAME" src="image.png" threshold="0.5">
//
// An embeddable anomaly detector. Load it with one module script:
//   <script type="module" src="https://your.site/anoscope/anomaly-detector.js"></script>
// The element owns its own detector worker (WebAssembly, all on the user's machine). The user
// drops, pastes or picks an image (or `src` names one); the element shows the result as the page
// does (photo-view.js): the photo at its own size and aspect with the heat map as a layer
// (opacity slider, overlay / original / side by side, zoom with wheel, pinch or buttons, pan by
// dragging), the defect regions outlined, numbered and listed. It fires
//   `anomaly-score`  CustomEvent, detail {score, verdict, threshold, map, width, height, name,
//                    photoWidth, photoHeight, regions, regionsWidth, regionsHeight}
//   `anomaly-error`  CustomEvent, detail {message}
// and exposes `.score`, `.map` (Float32Array, row-major width × height, values in [0, 1]: the map
// on the model's square input), `.mapWidth`, `.mapHeight`, `.regions`, and `.detect(blobOrFile)`
// (a Promise of the event detail). `regions` (at `threshold`, highest peak first) are
// {bbox: [x, y, w, h], area_px, area_pct, peak, mean, peak_xy} in pixels of the photo as drawn
// (regionsWidth × regionsHeight: the photo's size, or its copy bounded to 4096 px on the long side).
//
// `model` is a model name listed in the site's models.json (default: the first one that is not
// the interface test model, else the test model, clearly labelled as such).
import { DetectorClient, servedModels, verdict } from './common.js';
import { PhotoView, buildPhotoView } from './photo-view.js';

const BASE = new URL('./', import.meta.url);

class AnomalyDetector extends HTMLElement {
  static get observedAttributes() {
    return ['category', 'mode', 'threshold', 'src'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    const css = ['photo-view.css', 'anomaly-detector.css'].map((name) => {
      const link = document.createElement('link');
      link.rel = 'stylesheet';
      link.href = new URL(name, BASE).href;
      return link;
    });
    this.$zone = document.createElement('label');
    this.$zone.className = 'zone';
    this.$zone.tabIndex = 0;
    this.$zone.setAttribute('part', 'zone');
    this.$input = document.createElement('input');
    this.$input.type = 'file';
    this.$input.accept = 'image/*';
    this.$hint = document.createElement('span');
    this.$hint.textContent = 'Loading the anomaly detector…';
    this.$zone.append(this.$hint, this.$input);
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
    root.append(...css, this.$zone, this.$status, this.$result);
    this.score = null;
    this.regions = [];
    this.map = null;
    this.mapWidth = 0;
    this.mapHeight = 0;
    this.ready = null;
  }

  connectedCallback() {
    if (this.client) return;
    this.client = new DetectorClient(new URL('worker.js', BASE));
    this.ready = this.#start();
    this.ready.then(
      () => this.getAttribute('src') && this.#detectSrc(),
      () => {},
    );
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
    this.client?.terminate();
    this.client = null;
  }

  attributeChangedCallback(name, old, value) {
    // The first `src` is scored once the model is loaded (connectedCallback); later changes here.
    if (name === 'src' && value && old !== null && old !== value && this.client) this.#detectSrc();
  }

  async #start() {
    try {
      await this.client.ready;
      const models = await servedModels(BASE);
      const want = this.getAttribute('model');
      const m = want ? models.find((x) => x.name === want) : (models.find((x) => !x.test) ?? models[0]);
      if (!m) {
        throw new Error(
          want
            ? `model “${want}” is not served by this site (models.json lists: ${models.map((x) => x.name).join(', ') || 'none'})`
            : 'this site serves no checkpoint (run ./build.sh weights, then ./build.sh)',
        );
      }
      const url = (u) => new URL(u, BASE).href;
      this.modelInfo = await this.client.call('load', {
        label: m.label,
        test: !!m.test,
        configName: m.configName,
        configUrl: url(m.config.url),
        configSha256: m.config.sha256,
        weightsUrl: url(m.weights.url),
        weightsSha256: m.weights.sha256,
        promptsUrl: m.prompts ? url(m.prompts.url) : undefined,
        promptsSha256: m.prompts?.sha256,
      });
      this.$hint.textContent = `Drop, paste or pick an image to check it for anomalies${
        m.test ? ' (interface test model: random weights, meaningless scores)' : ''
      }.`;
    } catch (e) {
      this.#fail(e);
      throw e;
    }
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
    await this.ready;
    const mode = this.getAttribute('mode') || 'fast';
    if (mode !== 'fast' && mode !== 'winclip') {
      const e = new Error(`mode “${mode}” is not available in the element (fast or winclip)`);
      this.#fail(e);
      throw e;
    }
    const threshold = Number(this.getAttribute('threshold') ?? 0.5);
    this.$status.textContent = 'Scoring…';
    this.$status.className = '';
    try {
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
