// The photo-true result view, shared by the page (main.js) and <anomaly-detector>: the photo at
// its own size and aspect, the heat map as a layer over it (opacity), overlay / original / side by
// side, zoom (wheel, pinch, buttons, 1:1, fit) and pan (drag, one finger), numbered region boxes
// and the list beside them (hover or focus highlights a box). The page has the elements in
// index.html; the element builds the same ones in its shadow root (buildPhotoView). Styles:
// photo-view.css. Drawing only: the detector worker renders the layer and measures the regions.

const SVG = 'http://www.w3.org/2000/svg';

/** At most this many regions are listed and outlined (the exports carry all). */
export const MAX_LISTED_REGIONS = 50;

const fmt = (x) => x.toFixed(3);

/** One line of the regions list: region `i` (0-based) of a `regions` result. */
export const regionText = (g, i) =>
  `#${i + 1}: x ${g.bbox[0]}, y ${g.bbox[1]}, ${g.bbox[2]}×${g.bbox[3]} px · area ${g.area_px} px (${g.area_pct.toFixed(2)} %) · peak ${fmt(g.peak)} · mean ${fmt(g.mean)}`;

/** The region with the largest area (its index), or -1. */
export function largestRegion(list) {
  let best = -1;
  list.forEach((g, i) => {
    if (best < 0 || g.area_px > list[best].area_px) best = i;
  });
  return best;
}

/** The view's elements, made for a shadow root: the same ids and structure as index.html. */
export function buildPhotoView(doc = document) {
  const make = (tag, attrs = {}, ...kids) => {
    const e = tag === 'svg' ? doc.createElementNS(SVG, 'svg') : doc.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    e.append(...kids);
    return e;
  };
  const radio = (value, text, checked) => {
    const input = make('input', { type: 'radio', name: 'view', value });
    input.checked = checked;
    return make('label', { class: 'inline' }, input, ` ${text}`);
  };
  const opacity = make('input', { id: 'opacity', type: 'range', min: '0', max: '1', step: '0.05', value: '0.5' });
  const viewChoice = make(
    'fieldset',
    { id: 'view-choice', class: 'view-choice' },
    make('legend', {}, 'Show'),
    radio('overlay', 'overlay', true),
    radio('original', 'original', false),
    radio('side', 'side by side', false),
  );
  const zoomIn = make('button', { id: 'zoom-in', type: 'button', 'aria-label': 'Zoom in' }, '+');
  const zoomOut = make('button', { id: 'zoom-out', type: 'button', 'aria-label': 'Zoom out' }, '−');
  const zoom1 = make('button', { id: 'zoom-1', type: 'button', 'aria-label': 'Actual size (one photo pixel per screen pixel)' }, '1:1');
  const zoomFit = make('button', { id: 'zoom-fit', type: 'button', 'aria-label': 'Fit the photo to the view' }, 'fit');
  const zoomValue = make('output', { id: 'zoom-value', 'aria-live': 'polite' });
  const controls = make(
    'div',
    { class: 'row view-controls', part: 'controls' },
    make('label', {}, 'Heatmap opacity ', opacity),
    viewChoice,
    make('div', { class: 'zoom', role: 'group', 'aria-label': 'Zoom' }, zoomOut, zoomIn, zoom1, zoomFit, zoomValue),
  );
  const photo = make('canvas', { id: 'photo', width: '0', height: '0', role: 'img', 'aria-label': 'The photo, at its own size' });
  const photoSide = make('canvas', { id: 'photo-side', width: '0', height: '0', 'aria-hidden': 'true' });
  const overlay = make('canvas', { id: 'overlay', width: '0', height: '0', role: 'img', 'aria-label': 'No result yet' });
  const boxes = make('svg', { id: 'boxes', 'aria-hidden': 'true', preserveAspectRatio: 'none', viewBox: '0 0 1 1' });
  const views = make('div', { class: 'views', part: 'views' }, photoSide, make('div', { class: 'stack', id: 'stack' }, photo, overlay, boxes));
  const regionsNote = make('p', { id: 'regions-note', class: 'note', role: 'status' });
  const regions = make('ol', { id: 'regions', class: 'regions', 'aria-labelledby': 'regions-h' });
  const regionsBox = make(
    'div',
    { id: 'regions-box', class: 'regions-box', part: 'regions' },
    make('h3', { id: 'regions-h' }, 'Regions at or above the threshold'),
    regionsNote,
    regions,
  );
  regionsBox.hidden = true;
  const resultView = make('div', { id: 'result-view', class: 'result-view', 'data-view': 'overlay' }, views, regionsBox);
  return {
    controls,
    resultView,
    views,
    photo,
    photoSide,
    overlay,
    boxes,
    regionsBox,
    regionsNote,
    regions,
    opacity,
    viewRadios: Array.from(viewChoice.querySelectorAll('input')),
    zoomIn,
    zoomOut,
    zoom1,
    zoomFit,
    zoomValue,
  };
}

/**
 * The view over existing elements `els` ({resultView, views, photo, photoSide, overlay, boxes,
 * regionsBox, regionsNote, regions, opacity?, viewRadios?, zoomIn?, zoomOut?, zoom1?, zoomFit?,
 * zoomValue?}). Options: `regionsBeside` (the list sits beside the photo: its width is kept
 * free when fitting), `maxHeight()` (the most screen pixels the fitted photo may take).
 */
export class PhotoView {
  /** Screen pixels per pixel of the photo as drawn; null: fit to the view. */
  scale = null;
  min = 0.05;
  max = 16;

  constructor(els, { regionsBeside = true, maxHeight = () => window.innerHeight * 0.75 } = {}) {
    this.els = els;
    this.regionsBeside = regionsBeside;
    this.maxHeight = maxHeight;
    const v = els.views;
    els.zoomIn?.addEventListener('click', () => this.zoomBy(1.25));
    els.zoomOut?.addEventListener('click', () => this.zoomBy(1 / 1.25));
    els.zoom1?.addEventListener('click', () => this.zoomTo(1));
    els.zoomFit?.addEventListener('click', () => this.zoomTo(null));
    els.opacity?.addEventListener('input', () => this.setOpacity(Number(els.opacity.value)));
    for (const radio of els.viewRadios ?? []) {
      radio.addEventListener('change', () => radio.checked && this.setView(radio.value));
    }
    // Wheel (and a trackpad pinch, which arrives as a wheel with ctrlKey) zooms about the pointer.
    v.addEventListener(
      'wheel',
      (ev) => {
        if (!els.photo.width) return;
        ev.preventDefault();
        const box = v.getBoundingClientRect();
        this.zoomBy(Math.exp(-ev.deltaY * (ev.ctrlKey ? 0.01 : 0.002)), [ev.clientX - box.left, ev.clientY - box.top]);
      },
      { passive: false },
    );
    this.#pointers();
    window.addEventListener('resize', () => this.scale === null && this.applyZoom());
  }

  /** Drag or one finger pans; two fingers pinch-zoom about their midpoint (and pan with it). */
  #pointers() {
    const v = this.els.views;
    const down = new Map(); // pointerId → [clientX, clientY]
    let g = null; // the gesture since the last change of fingers
    const begin = () => {
      const pts = [...down.values()];
      const box = v.getBoundingClientRect();
      g = { pts, left: v.scrollLeft, top: v.scrollTop, s: this.scale ?? this.fitScale(), box };
      if (pts.length >= 2) {
        const [a, b] = pts;
        g.d = Math.hypot(a[0] - b[0], a[1] - b[1]) || 1;
        g.mid = [(a[0] + b[0]) / 2 - box.left, (a[1] + b[1]) / 2 - box.top];
      }
    };
    v.addEventListener('pointerdown', (ev) => {
      if (ev.pointerType === 'mouse' && ev.button !== 0) return;
      v.setPointerCapture?.(ev.pointerId);
      down.set(ev.pointerId, [ev.clientX, ev.clientY]);
      v.classList.add('panning');
      begin();
    });
    v.addEventListener('pointermove', (ev) => {
      if (!down.has(ev.pointerId) || !g) return;
      down.set(ev.pointerId, [ev.clientX, ev.clientY]);
      const pts = [...down.values()];
      if (pts.length === 1) {
        v.scrollLeft = g.left - (pts[0][0] - g.pts[0][0]);
        v.scrollTop = g.top - (pts[0][1] - g.pts[0][1]);
        return;
      }
      if (!this.els.photo.width) return;
      const [a, b] = pts;
      const d = Math.hypot(a[0] - b[0], a[1] - b[1]) || 1;
      const mid = [(a[0] + b[0]) / 2 - g.box.left, (a[1] + b[1]) / 2 - g.box.top];
      this.scale = Math.min(this.max, Math.max(this.min, (g.s * d) / g.d));
      this.applyZoom();
      // The photo point under the fingers' first midpoint stays under their midpoint now.
      const k = this.scale / g.s;
      v.scrollLeft = (g.left + g.mid[0]) * k - mid[0];
      v.scrollTop = (g.top + g.mid[1]) * k - mid[1];
    });
    const up = (ev) => {
      if (!down.delete(ev.pointerId)) return;
      if (down.size) begin();
      else {
        g = null;
        v.classList.remove('panning');
      }
    };
    v.addEventListener('pointerup', up);
    v.addEventListener('pointercancel', up);
  }

  /** The scale that fits the photo (or both copies side by side) into the view. */
  fitScale() {
    const { photo, resultView, regionsBox } = this.els;
    const w = photo.width;
    const h = photo.height;
    if (!w || !h) return 1;
    const side = resultView.dataset.view === 'side';
    const avail = Math.max(160, resultView.clientWidth - (this.regionsBeside && !regionsBox.hidden ? 300 : 0) - 20);
    const availW = side ? (avail - 10) / 2 : avail;
    const availH = Math.max(160, this.maxHeight());
    return Math.min(availW / w, availH / h, 8);
  }

  /** Sizes the photo (and the side copy) for the zoom; `at`: [x, y] in the view kept in place. */
  applyZoom(at = null) {
    const { photo, photoSide, views: v, zoomValue, boxes } = this.els;
    const w = photo.width;
    const h = photo.height;
    if (!w || !h) return;
    const old = photo.getBoundingClientRect().width / w || 1;
    const s = this.scale ?? this.fitScale();
    for (const c of [photo, photoSide]) {
      c.style.width = `${w * s}px`;
      c.style.height = `${h * s}px`;
    }
    if (at) {
      v.scrollLeft = ((v.scrollLeft + at[0]) / old) * s - at[0];
      v.scrollTop = ((v.scrollTop + at[1]) / old) * s - at[1];
    }
    if (zoomValue) zoomValue.textContent = `${Math.round(s * 100)} %${this.scale === null ? ' (fit)' : ''}`;
    boxes.style.setProperty('--inv', String(1 / s)); // box labels keep their size on screen
    photo.dataset.scale = String(s);
  }

  zoomBy(f, at) {
    const cur = this.scale ?? this.fitScale();
    this.scale = Math.min(this.max, Math.max(this.min, cur * f));
    this.applyZoom(at ?? [this.els.views.clientWidth / 2, this.els.views.clientHeight / 2]);
  }

  /** `s` screen pixels per photo pixel (1: actual size), or null: fit. */
  zoomTo(s) {
    this.scale = s;
    this.applyZoom();
  }

  /** Draws the photo (an ImageBitmap, or null: left blank) at the layer's size; zoom back to fit. */
  drawPhoto(bmp, width, height) {
    for (const c of [this.els.photo, this.els.photoSide]) {
      c.width = width;
      c.height = height;
      const ctx = c.getContext('2d');
      ctx.imageSmoothingQuality = 'high';
      if (bmp) ctx.drawImage(bmp, 0, 0, width, height);
    }
    this.scale = null;
    this.applyZoom();
  }

  /** The heat layer (RGBA bytes, width × height: the photo as drawn). */
  drawLayer(rgba, width, height) {
    const c = this.els.overlay;
    c.width = width;
    c.height = height;
    const img = new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength), width, height);
    c.getContext('2d').putImageData(img, 0, 0);
    if (this.scale === null) this.applyZoom();
  }

  setOpacity(x) {
    this.els.overlay.style.opacity = String(x);
  }

  /** 'overlay', 'original' or 'side'. */
  setView(view) {
    this.els.resultView.dataset.view = view;
    for (const r of this.els.viewRadios ?? []) r.checked = r.value === view;
    if (this.scale === null) this.applyZoom();
  }

  /** Numbered boxes over the photo and the list beside it: `{width, height, list}` as the worker
   * measures them (coordinates in pixels of the photo as drawn). */
  drawRegions({ width, height, list }) {
    const { boxes, regions, regionsBox, regionsNote } = this.els;
    const doc = boxes.ownerDocument;
    boxes.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const shown = list.slice(0, MAX_LISTED_REGIONS);
    const nodes = [];
    const items = [];
    shown.forEach((g, i) => {
      const [x, y, w, h] = g.bbox;
      const rect = doc.createElementNS(SVG, 'rect');
      for (const [k, v] of Object.entries({ x, y, width: w, height: h })) rect.setAttribute(k, String(v));
      const label = doc.createElementNS(SVG, 'text');
      label.setAttribute('x', String(x + 2));
      label.setAttribute('y', String(y + 1));
      label.textContent = String(i + 1);
      nodes.push(rect, label);
      const li = doc.createElement('li');
      const b = doc.createElement('button');
      b.type = 'button';
      b.textContent = regionText(g, i);
      b.dataset.bbox = g.bbox.join(',');
      const hot = (on) => {
        rect.classList.toggle('hot', on);
        label.classList.toggle('hot', on);
      };
      b.addEventListener('mouseenter', () => hot(true));
      b.addEventListener('mouseleave', () => hot(false));
      b.addEventListener('focus', () => hot(true));
      b.addEventListener('blur', () => hot(false));
      li.append(b);
      items.push(li);
    });
    boxes.replaceChildren(...nodes);
    regions.replaceChildren(...items);
    regionsBox.hidden = false;
    regionsNote.textContent = list.length
      ? `${list.length} region${list.length === 1 ? '' : 's'}, highest peak first${list.length > shown.length ? ` (the first ${shown.length} are listed and outlined; the exports carry all)` : ''}. Coordinates in pixels of the photo as shown (${width}×${height}).`
      : 'No region at or above the threshold.';
    regionsBox.dataset.count = String(list.length);
    if (this.scale === null) this.applyZoom();
  }
}
