// anoscope page: UI thread. The model runs in worker.js.
const $ = (id) => document.getElementById(id);
const MAX_PIXELS = 64 * 1024 * 1024; // same decode limit as the native CLI (64 Mpx)
// OpenAI CLIP normalisation (also open_clip's default when its config has none).
const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

function setStatus(id, text, kind = '') {
  const el = $(id);
  el.textContent = text;
  el.className = kind;
}

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const pending = new Map();
let nextId = 1;

function call(type, payload, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, type, payload }, transfer);
  });
}

worker.onmessage = ({ data }) => {
  if (data.type === 'ready') {
    const iso = self.crossOriginIsolated ? 'cross-origin isolated' : 'not cross-origin isolated';
    setStatus('engine-status', `anoscope ${data.version} (WebAssembly, SIMD) ready; page is ${iso}.`, 'ok');
    $('model-files').disabled = false;
    return;
  }
  if (data.type === 'fatal') {
    setStatus('engine-status', data.error, 'error');
    return;
  }
  const p = pending.get(data.id);
  if (!p) return;
  pending.delete(data.id);
  if (data.ok) p.resolve(data.result);
  else p.reject(new Error(data.error));
};
worker.onerror = (e) => {
  setStatus('engine-status', `worker failed: ${e.message || 'see the console'}`, 'error');
};

let current = null; // {name, imageSize, mean, std}

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
const secs = (ms) => `${(ms / 1000).toFixed(2)} s`;

$('model-files').addEventListener('change', async (ev) => {
  const files = [...ev.target.files];
  const jsons = files.filter((f) => f.name.endsWith('.json'));
  const weights = files.filter((f) => f.name.endsWith('.safetensors'));
  if (jsons.length !== 1 || weights.length !== 1) {
    setStatus('model-status', 'Pick exactly one config (.json) and one .safetensors file.', 'error');
    return;
  }
  $('image-file').disabled = true;
  $('image-file').value = '';
  setStatus('image-status', '');
  try {
    const configText = await jsons[0].text();
    const config = JSON.parse(configText);
    // The file name tells the loader which layout to expect; accept renamed files by content.
    const openClip = 'model_cfg' in config;
    const configName = openClip ? 'open_clip_config.json' : 'config.json';
    const pre = config.preprocess_cfg ?? {};
    setStatus('model-status', `Loading ${weights[0].name} (${mb(weights[0].size)})…`, 'busy');
    const buffer = await weights[0].arrayBuffer();
    const r = await call('load', { configName, configText, weights: buffer }, [buffer]);
    current = {
      name: weights[0].name,
      imageSize: r.imageSize,
      mean: pre.mean ?? CLIP_MEAN,
      std: pre.std ?? CLIP_STD,
    };
    setStatus(
      'model-status',
      `model loaded: ${weights[0].name} (${openClip ? 'open_clip' : 'Hugging Face'} layout, ` +
        `${r.imageSize}×${r.imageSize} input, text tower: ${r.hasText ? 'yes' : 'no'}) in ${secs(r.ms)}`,
      'ok',
    );
    $('image-file').disabled = false;
  } catch (e) {
    current = null;
    setStatus('model-status', `Could not load the checkpoint: ${e.message}`, 'error');
  }
});

/** Shortest side to `size`, centre crop, CLIP normalisation -> CHW Float32Array. */
function toPixels(bitmap, size, mean, std) {
  const canvas = $('preview');
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const scale = size / Math.min(bitmap.width, bitmap.height);
  const w = bitmap.width * scale;
  const h = bitmap.height * scale;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(bitmap, (size - w) / 2, (size - h) / 2, w, h);
  const rgba = ctx.getImageData(0, 0, size, size).data;
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = (rgba[4 * i + c] / 255 - mean[c]) / std[c];
  }
  return out;
}

$('image-file').addEventListener('change', async (ev) => {
  const file = ev.target.files[0];
  if (!file || !current) return;
  try {
    setStatus('image-status', `Decoding ${file.name}…`, 'busy');
    const bitmap = await createImageBitmap(file);
    if (bitmap.width * bitmap.height > MAX_PIXELS) {
      bitmap.close();
      throw new Error(`${bitmap.width}×${bitmap.height} is over the 64 Mpx limit`);
    }
    const size = current.imageSize;
    const pixels = toPixels(bitmap, size, current.mean, current.std);
    bitmap.close();
    setStatus('image-status', `Encoding with ${current.name}…`, 'busy');
    const r = await call(
      'embedImage',
      { pixels: pixels.buffer, height: size, width: size, surgeryLayers: 0 },
      [pixels.buffer],
    );
    const shapes = Object.entries(r.tensors)
      .map(([k, v]) => `${k} [${v.shape.join(', ')}]`)
      .join(', ');
    setStatus(
      'image-status',
      `model loaded: ${current.name}; encoded ${file.name} in ${secs(r.ms)}: ${shapes}\n` +
        '(browser resampling, not the bicubic resize of the reference pipeline)',
      'ok',
    );
  } catch (e) {
    setStatus('image-status', `Could not encode the image: ${e.message}`, 'error');
  }
});
