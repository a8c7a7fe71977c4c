// Writes each input image of the fidelity fixtures as its own safetensors file
// (`pixel_values` [1,3,H,W] F32), for the native CLI side of the parity test:
//   <out>/<layout>_img0.pixels.safetensors, _img1 (32 px), _img48 (48 px)
// Usage: node tests/wasm/prepare.mjs OUT_DIR
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, writeSafetensors, row } from './safetensors.mjs';

export const LAYOUTS = ['hf_tiny', 'openclip_tiny'];
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const outDir = process.argv[2];
if (!outDir) {
  console.error('usage: node tests/wasm/prepare.mjs OUT_DIR');
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
for (const layout of LAYOUTS) {
  const file = path.join(repo, 'tests/fixtures', `${layout}_expected.safetensors`);
  const t = readSafetensors(fs.readFileSync(file));
  const px = t.get('pixel_values');
  const px48 = t.get('pixel_values_48');
  if (!px || !px48) throw new Error(`${file}: pixel_values / pixel_values_48 missing`);
  const items = [
    ['img0', row(px, 0)],
    ['img1', row(px, 1)],
    ['img48', row(px48, 0)],
  ];
  for (const [name, tensor] of items) {
    const dest = path.join(outDir, `${layout}_${name}.pixels.safetensors`);
    fs.writeFileSync(dest, writeSafetensors({ pixel_values: { ...tensor, dtype: 'F32' } }));
    console.log(`  ${path.relative(repo, dest)}  pixel_values ${JSON.stringify(tensor.shape)}`);
  }
}
