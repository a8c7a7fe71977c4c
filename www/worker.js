// Module worker: owns the wasm module and the loaded model, so the page stays
// responsive while a checkpoint loads or an image is encoded.
import init, { version, ClipModel } from './pkg/anoscope.js';

let model = null;

const ready = init().then(
  () => postMessage({ type: 'ready', version: version() }),
  (e) => {
    postMessage({ type: 'fatal', error: `could not start the WebAssembly module: ${e?.message ?? e}` });
    throw e;
  },
);

/** Tensor names and shapes from safetensors bytes (header only). */
function describe(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  delete header.__metadata__;
  return Object.fromEntries(Object.entries(header).map(([k, v]) => [k, { dtype: v.dtype, shape: v.shape }]));
}

const handlers = {
  load({ configName, configText, weights }) {
    const t0 = performance.now();
    const next = ClipModel.load(configName, configText, new Uint8Array(weights));
    if (model) model.free();
    model = next;
    return { imageSize: model.imageSize(), hasText: model.hasText(), ms: performance.now() - t0 };
  },
  embedImage({ pixels, height, width, surgeryLayers }) {
    if (!model) throw new Error('no model loaded');
    const t0 = performance.now();
    const out = model.embedImage(new Float32Array(pixels), height, width, surgeryLayers);
    return { tensors: describe(out), ms: performance.now() - t0 };
  },
};

onmessage = async ({ data }) => {
  const { id, type, payload } = data;
  try {
    await ready;
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    postMessage({ id, ok: true, result: handler(payload) });
  } catch (e) {
    postMessage({ id, ok: false, error: e?.message ?? String(e) });
  }
};
