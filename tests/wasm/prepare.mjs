// Prepares the native side of the wasm tests in OUT_DIR:
//  * each input image of the fidelity fixtures as its own safetensors file (`pixel_values`
//    [1,3,H,W] F32), for the parity test: <out>/<layout>_img0.pixels.safetensors, _img1 (32 px),
//    _img48 (48 px);
//  * <out>/api/: the native CLI's outputs the page-API test (api.test.mjs) compares with: a prompt
//    bundle (`anoscope prompts build`) and `anoscope detect` in every mode on tests/ images (see
//    api_cases.mjs). The CLI is $ANOSCOPE_CLI, else $CARGO_TARGET_DIR/debug/anoscope (default
//    target/debug/anoscope), as built by `./build.sh test`.
// Usage: node tests/wasm/prepare.mjs OUT_DIR
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { API_MODEL, API_CATEGORIES, API_CASES, apiDir } from './api_cases.mjs';
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

const cli =
  process.env.ANOSCOPE_CLI ||
  path.join(process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(repo, 'target'), 'debug/anoscope');
if (!fs.existsSync(cli)) {
  console.error(`native CLI ${cli} missing: build it with 'cargo build -p anoscope --bin anoscope' (or set ANOSCOPE_CLI)`);
  process.exit(1);
}
const api = apiDir(outDir);
fs.rmSync(api, { recursive: true, force: true });
fs.mkdirSync(api, { recursive: true });
function runCli(args) {
  console.log(`  anoscope ${args.join(' ')}`);
  execFileSync(cli, args, { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
}
runCli(['prompts', 'build', '--model', API_MODEL, '--categories', API_CATEGORIES.join(','), '--out', path.join(api, 'prompts.safetensors')]);
for (const c of API_CASES) {
  const refs = c.refs ? ['--refs', ...c.refs] : [];
  runCli(['detect', '--model', API_MODEL, '--category', 'bottle', '--mode', c.mode, ...refs, '--out', path.join(api, c.name), ...c.images]);
}
