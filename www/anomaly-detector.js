// <anomaly-detector category="bottle" mode="fast" model="NAME" src="image.png" threshold="0.5">
//
// An embeddable anomaly detector. Load it with one module script:
//   <script type="module" src="https://your.site/anoscope/anomaly-detector.js"></script>
// The element owns its own detector worker (WebAssembly, all on the user's machine). The user
// drops, pastes or picks an image (or `src` names one); the element draws the heatmap and fires
//   `anomaly-score`  CustomEvent, detail {score, verdict, threshold, map, width, height, name}
//   `anomaly-error`  CustomEvent, detail {message}
// and exposes `.score`, `.map` (Float32Array, row-major width × height, values in [0, 1]),
// `.mapWidth`, `.mapHeight`, and `.detect(blobOrFile)` (a Promise of the event detail).
//
// `model` is a model name listed in the site's models.json (default: the first one that is not
// the interface test model, else the test model, clearly labelled as such).
import { DetectorClient, servedModels, verdict } from './common.js';

const BASE = new URL('./', import.meta.url);

class AnomalyDetector extends HTMLElement {
  static get observedAttributes() {
    return ['category', 'mode', 'threshold', 'src'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    const css = document.createElement('link');
    css.rel = 'stylesheet';
    css.href = new URL('anomaly-detector.css', BASE).href;
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
    this.$canvas = document.createElement('canvas');
    this.$canvas.width = 0;
    this.$canvas.height = 0;
    this.$canvas.setAttribute('role', 'img');
    this.$canvas.setAttribute('part', 'canvas');
    this.$status = document.createElement('p');
    this.$status.setAttribute('role', 'status');
    this.$status.setAttribute('part', 'status');
    root.append(css, this.$zone, this.$canvas, this.$status);
    this.score = null;
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
      const o = await this.client.call('overlay', { opacity: 0.5, threshold });
      this.$canvas.width = o.width;
      this.$canvas.height = o.height;
      this.$canvas
        .getContext('2d')
        .putImageData(new ImageData(new Uint8ClampedArray(o.rgba.buffer), o.width, o.height), 0, 0);
      this.score = r.score;
      this.map = r.map;
      this.mapWidth = r.width;
      this.mapHeight = r.height;
      const v = verdict(r.score, threshold);
      const text = `Anomaly score ${r.score.toFixed(3)}: ${v} at threshold ${threshold}.`;
      this.$status.textContent = text;
      this.$canvas.setAttribute('aria-label', `Anomaly heatmap. ${text}`);
      const detail = { score: r.score, verdict: v, threshold, map: r.map, width: r.width, height: r.height, name: blob.name };
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
