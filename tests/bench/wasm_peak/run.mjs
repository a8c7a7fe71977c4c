// Times the micro-kernels of src/lib.rs (README.md): best of 7 per kernel, 3 interleaved rounds.
//   node --experimental-wasm-relaxed-simd tests/bench/wasm_peak/run.mjs [WASM]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = process.argv[2] ?? path.join(here, 'target/wasm32-unknown-unknown/release/wasm_peak.wasm');
const { instance } = await WebAssembly.instantiate(fs.readFileSync(file), {});
const e = instance.exports;
const KC = 384;
// name, function, argument, 128-bit multiply-adds (f32) or int8 multiply-adds per unit of it
const kernels = [
  ['peak', e.peak, 2e7, 10, 'vFMA'],
  ['f32_kernel', e.f32_kernel, 5e4, KC * 8, 'vFMA'],
  ['i8_in_loop', e.i8_in_loop, 2e4, 4 * 8 * KC, 'MAC'],
  ['i16_panel', e.i16_panel, 2e4, 4 * 8 * KC, 'MAC'],
];
for (let round = 1; round <= 3; round++) {
  for (const [name, f, arg, per, unit] of kernels) {
    f(arg / 10);
    let best = Infinity;
    for (let i = 0; i < 7; i++) {
      const t0 = performance.now();
      f(arg);
      best = Math.min(best, performance.now() - t0);
    }
    console.log(`round ${round} ${name.padEnd(11)} ${((per * arg) / (best * 1e6)).toFixed(2)} G ${unit}/s (${best.toFixed(1)} ms)`);
  }
}
