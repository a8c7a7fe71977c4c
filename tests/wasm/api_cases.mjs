// What tests/wasm/prepare.mjs runs through the native CLI and api.test.mjs runs through wasm:
// one list, so both sides see the same images, modes and order.
import path from 'node:path';

export const API_MODEL = 'tests/fixtures/hf_tiny';
export const API_CATEGORIES = ['bottle', 'object'];

const T = 'tests/data/tiny_mvtec/bottle';
// Square and non-square (40×24) images; both sides resize them to the model's square input.
const SINGLE = ['tests/images/bottle_broken_large_000_64.png', 'tests/images/bottle_64_pil_bicubic_40x24.png', `${T}/test/contamination/001.png`];
const BATCH = [
  `${T}/test/good/000.png`,
  `${T}/test/good/001.png`,
  `${T}/test/broken_large/000.png`,
  `${T}/test/good/002.png`,
  `${T}/test/contamination/000.png`,
  `${T}/test/broken_large/001.png`,
];

/** The output stem `anoscope detect` gives each image of a run (crate/src/cli/detect.rs
 * `load_images`: in order, a stem equal to another gets its parent folder as a prefix, then
 * what still collides is numbered). */
export function stems(images) {
  // As `anoscope detect` names its outputs (cli/detect.rs distinct_stems): every stem shared by
  // several images gets its folder as a prefix, then what still collides is numbered.
  const base = images.map((p) => path.basename(p, path.extname(p)));
  const s = base.map((b, i) => {
    const parent = path.basename(path.dirname(images[i]));
    return base.filter((x) => x === b).length > 1 && parent && parent !== '.' ? `${parent}_${b}` : b;
  });
  const seen = new Set();
  for (let i = 0; i < s.length; i++) {
    if (seen.has(s[i])) s[i] = `${s[i]}_${i}`;
    seen.add(s[i]);
  }
  return s;
}

export const API_CASES = [
  { name: 'fast', mode: 'fast', images: SINGLE },
  { name: 'winclip', mode: 'winclip', images: SINGLE },
  { name: 'fewshot', mode: 'fewshot', images: SINGLE, refs: [`${T}/train/good/000.png`, `${T}/train/good/001.png`] },
  { name: 'batch', mode: 'batch', images: BATCH },
];

export function apiDir(parityDir) {
  return path.join(parityDir, 'api');
}
