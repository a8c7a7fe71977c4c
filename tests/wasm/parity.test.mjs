// wasm parity test: the wasm build (www/dist/pkg) against
//   * the PyTorch reference fixtures (tests/fixtures/<layout>_expected.safetensors), ≤ 1e-4
//   * the native CLI on the same inputs (written by ./build.sh test into
//     $ANOSCOPE_PARITY_DIR, default target/wasm-parity), ≤ 1e-5
// Run through `./build.sh test` (it builds both sides first), or by hand after it:
//   node --test tests/wasm/*.test.mjs
// Writes a max|Δ| table to <parity dir>/summary.txt (and .json).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, row } from './safetensors.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PKG = process.env.ANOSCOPE_WASM_PKG ? path.resolve(process.env.ANOSCOPE_WASM_PKG) : path.join(REPO, 'www/dist/pkg');
const PARITY_DIR = process.env.ANOSCOPE_PARITY_DIR
  ? path.resolve(process.env.ANOSCOPE_PARITY_DIR)
  : path.join(REPO, 'target/wasm-parity');

const TOL_REFERENCE = 1e-4;
const TOL_NATIVE = 1e-5;
const SURGERY_LAYERS = 2;
// Must match PROMPTS in build.sh (the native embed-text run).
const NATIVE_PROMPTS = ['a photo of a flawless bottle.', 'a photo of a damaged bottle.'];
const EOT = 49407n;

const LAYOUTS = [
  { name: 'hf_tiny', config: 'config.json', weights: 'model.safetensors' },
  { name: 'openclip_tiny', config: 'open_clip_config.json', weights: 'open_clip_model.safetensors' },
];

const summary = []; // {layout, input, output, against, maxAbs, tol}

function need(file, hint) {
  if (!fs.existsSync(file)) {
    throw new Error(`${path.relative(REPO, file)} is missing (${hint})`);
  }
  return file;
}

function readTensors(file, hint) {
  return readSafetensors(fs.readFileSync(need(file, hint)));
}

function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length, 'element count');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}

/** Asserts |got - want| ≤ tol elementwise (same shape) and records it in the summary. */
function close(got, want, tol, label) {
  assert.ok(got, `${label.layout} ${label.input}: output ${label.output} missing`);
  assert.ok(want, `${label.layout} ${label.input}: ${label.against} value for ${label.output} missing`);
  assert.deepEqual(got.shape, want.shape, `${label.output} shape (${label.input}, vs ${label.against})`);
  const m = maxAbsDiff(got.data, want.data);
  summary.push({ ...label, maxAbs: m, tol });
  assert.ok(
    m <= tol,
    `${label.layout} ${label.input} ${label.output}: max|Δ| vs ${label.against} = ${m} > ${tol}`,
  );
}

function firstEot(ids, offset) {
  for (let j = 0; j < 77; j++) if (ids[offset + j] === EOT) return j;
  return 76;
}

/** The prompts behind the fixture's input_ids/text_embeds, from the safetensors metadata
 * (`info` = JSON object with `prompts`, or a top-level `prompts` JSON array). */
function fixturePrompts(meta) {
  if (meta.info) {
    const info = JSON.parse(meta.info);
    if (Array.isArray(info.prompts)) return info.prompts;
  }
  return meta.prompts ? JSON.parse(meta.prompts) : null;
}

let wasm;
async function loadWasm() {
  if (wasm) return wasm;
  const js = need(path.join(PKG, 'anoscope.js'), 'run ./build.sh build');
  const bin = need(path.join(PKG, 'anoscope_bg.wasm'), 'run ./build.sh build');
  const mod = await import(js);
  mod.initSync({ module: fs.readFileSync(bin) });
  wasm = mod;
  return mod;
}

test('wasm module loads and reports its version', async () => {
  const { version } = await loadWasm();
  const v = version();
  assert.match(v, /^\d+\.\d+\.\d+/);
  console.log(`anoscope wasm version ${v}`);
});

for (const layout of LAYOUTS) {
  test(`parity: ${layout.name}`, async (t) => {
    const { ClipModel } = await loadWasm();
    const dir = path.join(REPO, 'tests/fixtures', layout.name);
    const configText = fs.readFileSync(need(path.join(dir, layout.config), 'fixture'), 'utf8');
    const weights = new Uint8Array(fs.readFileSync(need(path.join(dir, layout.weights), 'fixture')));
    const expected = readTensors(
      path.join(REPO, 'tests/fixtures', `${layout.name}_expected.safetensors`),
      'fixture',
    );
    const nativeHint = 'written by ./build.sh test (native CLI)';
    const model = ClipModel.load(layout.config, configText, weights);
    try {
      const L = (input, output, against) => ({ layout: layout.name, input, output, against });

      await t.test('32 px images, surgery k=2', () => {
        for (let i = 0; i < 2; i++) {
          const px = row(expected.get('pixel_values'), i);
          const out = readSafetensors(model.embedImage(px.data, 32, 32, SURGERY_LAYERS));
          const native = readTensors(path.join(PARITY_DIR, `${layout.name}_img${i}.safetensors`), nativeHint);
          const pairs = [
            ['image_embeds', 'image_embeds'],
            ['patch_tokens', 'patch_tokens'],
            ['last_hidden_state', 'last_hidden_state'],
            ['surgery_tokens', 'surgery_tokens_k2'],
          ];
          for (const [name, refName] of pairs) {
            close(out.get(name), row(expected.get(refName), i), TOL_REFERENCE, L(`img${i}`, name, 'reference'));
            close(out.get(name), native.get(name), TOL_NATIVE, L(`img${i}`, name, 'native'));
          }
        }
      });

      await t.test('48 px image (interpolated position embeddings)', () => {
        const px = row(expected.get('pixel_values_48'), 0);
        const out = readSafetensors(model.embedImage(px.data, 48, 48, 0));
        assert.ok(!out.has('surgery_tokens'), 'surgery_tokens must be absent when surgeryLayers = 0');
        close(out.get('image_embeds'), expected.get('image_embeds_48'), TOL_REFERENCE, L('img48', 'image_embeds', 'reference'));
        close(out.get('patch_tokens'), expected.get('patch_tokens_48'), TOL_REFERENCE, L('img48', 'patch_tokens', 'reference'));
        const native = readTensors(path.join(PARITY_DIR, `${layout.name}_img48.safetensors`), nativeHint);
        for (const name of ['image_embeds', 'patch_tokens', 'last_hidden_state']) {
          close(out.get(name), native.get(name), TOL_NATIVE, L('img48', name, 'native'));
        }
      });

      await t.test('input validation', () => {
        assert.throws(() => model.embedImage(new Float32Array(10), 32, 32, 0));
      });

      await t.test('text tower: fixture prompts', () => {
        const prompts = fixturePrompts(expected.metadata);
        assert.ok(Array.isArray(prompts), 'fixture metadata has no prompts');
        const out = readSafetensors(model.embedText(prompts));
        close(out.get('text_embeds'), expected.get('text_embeds'), TOL_REFERENCE, L('prompts', 'text_embeds', 'reference'));
        // Token ids must agree up to and including the first end-of-text; the padding
        // after it differs between layouts (open_clip pads with 0, transformers with EOT)
        // and does not reach the pooled embedding.
        const got = out.get('input_ids');
        const want = expected.get('input_ids');
        assert.deepEqual(got.shape, want.shape, 'input_ids shape');
        for (let r = 0; r < prompts.length; r++) {
          const n = firstEot(want.data, r * 77) + 1;
          assert.deepEqual(
            Array.from(got.data.subarray(r * 77, r * 77 + n)),
            Array.from(want.data.subarray(r * 77, r * 77 + n)),
            `input_ids of ${JSON.stringify(prompts[r])}`,
          );
        }
        const samePadding = got.data.every((v, k) => v === want.data[k]);
        console.log(`${layout.name}: input_ids padding ${samePadding ? 'identical to' : 'differs from'} the reference`);
      });

      await t.test('text tower: against native embed-text', () => {
        const out = readSafetensors(model.embedText(NATIVE_PROMPTS));
        const native = readTensors(path.join(PARITY_DIR, `${layout.name}_text.safetensors`), nativeHint);
        close(out.get('text_embeds'), native.get('text_embeds'), TOL_NATIVE, L('bottle prompts', 'text_embeds', 'native'));
        assert.deepEqual(
          Array.from(out.get('input_ids').data),
          Array.from(native.get('input_ids').data),
          'input_ids identical to native',
        );
      });
    } finally {
      model.free();
    }
  });
}

after(() => {
  if (!summary.length) return;
  const lines = summary.map(
    (s) =>
      `${s.layout.padEnd(14)} ${s.input.padEnd(15)} ${s.output.padEnd(18)} vs ${s.against.padEnd(9)} ` +
      `max|Δ| = ${s.maxAbs.toExponential(2)}  (tol ${s.tol.toExponential(0)})${s.maxAbs <= s.tol ? '' : '  FAIL'}`,
  );
  for (const l of lines) console.log(l);
  try {
    fs.mkdirSync(PARITY_DIR, { recursive: true });
    fs.writeFileSync(path.join(PARITY_DIR, 'summary.txt'), lines.join('\n') + '\n');
    fs.writeFileSync(path.join(PARITY_DIR, 'summary.json'), JSON.stringify(summary, null, 1) + '\n');
  } catch (e) {
    console.log(`# could not write the summary: ${e.message}`);
  }
});
