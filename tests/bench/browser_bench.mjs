#!/usr/bin/env node
// Browser benchmark: anoscope's wasm build vs onnxruntime-web on the same checkpoint, in
// headless Debian Chromium, cross-origin isolated (so onnxruntime-web may use threads).
//
//   ./build.sh build                                   # www/dist/pkg (our wasm)
//   npm --prefix tests/bench ci                        # onnxruntime-web (peer)
//   anoscope random-weights --arch vit-b-16 --seed 0 --out /tmp/vitb16
//   python tests/reference/export_onnx.py --checkpoint /tmp/vitb16 --out /tmp/vitb16.onnx
//   python tests/reference/quantize_onnx_q8.py --onnx /tmp/vitb16.onnx --out /tmp/vitb16_q8.onnx
//   node tests/bench/browser_bench.mjs --model /tmp/vitb16 --onnx /tmp/vitb16.onnx \
//        [--onnx-q8 /tmp/vitb16_q8.onnx] [--runs 5] [--rounds 5] [--ours-threads 1,2]
//        [--ort-threads 1,2] [--variants simd,relaxed] [--text] [--json out.json]
//   --onnx-q8 adds onnxruntime-web running the transformers.js-style q8 export (what
//   transformers.js loads by default on its wasm device) at the --ort-threads counts.
//   --variants picks our wasm module variants (simd: SIMD128, relaxed: + relaxed SIMD, in
//   www/dist/pkg-relaxed and pkg-threads-relaxed when ./build.sh build made them, with the int8
//   dot product the module picks for this CPU; relaxed-dot and simd128-dot: the relaxed module
//   made to run that int8 dot product, for comparing them); each is its own row.
//   --q8-model DIR also runs our q8 checkpoint (anoscope convert --dtype q8) as peer ours-q8;
//   with --q8-only, ours-q8 alone (not our f32 checkpoint).
//   --baseline DIST runs another build of ours (a www/dist made by ./build.sh build from another
//   commit: pkg, pkg-threads, pkg-relaxed, …) as peers base / base-q8, interleaved with ours, and
//   prints ours ÷ baseline: an A/B of a change in the browser, threads included.
//   --text also times one prompt through our text tower (compare: tests/reference/bench_text.py)
//   --surgery K runs our pass with the CLIP Surgery path in the last K blocks (fast mode: half)
//   Our blocks also print the wasm linear memory after the runs (its peak: it never shrinks).
//   --ours-threads takes `1p` too: our threaded build on a pool of one thread (the `1` rows run
//   the single-threaded build), which tells what a second thread buys from what the threaded
//   build costs.
//   --load stream loads our checkpoint as the page does (ClipLoader fed with the fetch body's
//   chunks, image tower only unless --text; "ready" = image tower usable); --load whole (default)
//   hands the whole file over at once. --ort-threads '' runs ours alone (then --onnx is optional).
//   (our 2-thread figure needs the threaded build in www/dist/pkg-threads: ./build.sh build
//   makes it when the nightly toolchain is there)
//
// Each block loads a fresh page for one peer and thread count, runs 2 warm-up encodes and
// `runs` timed ones (median). Blocks are interleaved, the order rotated each round, so the
// machine's noise hits every peer alike; the table gives the median over rounds and the ratio
// ours / peer. Both peers get the same pixels; the script also reports max|Δ| of image_embeds
// (both compute the same function of the same weights).
import { createServer } from 'node:http';
import { createReadStream, statSync, writeFileSync } from 'node:fs';
import { extname, join, normalize, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { CHROMIUM_FLAGS } from '../browser/harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    onnx: { type: 'string' },
    'onnx-q8': { type: 'string' },
    'q8-model': { type: 'string' },
    'q8-only': { type: 'boolean', default: false },
    variants: { type: 'string', default: 'simd' },
    pkg: { type: 'string', default: join(root, 'www/dist/pkg') },
    'pkg-threads': { type: 'string', default: join(root, 'www/dist/pkg-threads') },
    baseline: { type: 'string' },
    runs: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '5' },
    'ort-threads': { type: 'string', default: '1,2' },
    'ours-threads': { type: 'string', default: '1,2' },
    text: { type: 'boolean', default: false },
    surgery: { type: 'string', default: '0' },
    load: { type: 'string', default: 'whole' },
    size: { type: 'string', default: '224' },
    json: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (!a.model || (!a.onnx && a['ort-threads'] !== '')) {
  console.error('usage: node tests/bench/browser_bench.mjs --model CHECKPOINT_DIR --onnx MODEL.onnx [--runs 5] [--rounds 5]');
  process.exit(2);
}
const runs = Number(a.runs);
const rounds = Number(a.rounds);
const ortThreads = a['ort-threads'].split(',').filter(Boolean).map(Number);
// `1p`: our threaded build with a pool of one thread (the single-threaded build is `1`).
const oursThreads = a['ours-threads'].split(',').filter(Boolean);
for (const t of oursThreads) {
  if (!/^([1-9][0-9]*|1p)$/.test(t)) {
    console.error(`--ours-threads: '${t}' is not a thread count (N, or 1p: the threaded build on one thread)`);
    process.exit(2);
  }
}
const variants = a.variants.split(',').filter(Boolean);
for (const v of variants) {
  if (!['simd', 'relaxed', 'relaxed-dot', 'simd128-dot'].includes(v)) {
    console.error(`--variants: unknown variant '${v}' (simd, relaxed, relaxed-dot, simd128-dot)`);
    process.exit(2);
  }
}

// Our module variants that the runs need: [folder under www/dist, where ours is].
const threaded = oursThreads.some((t) => t !== '1');
const relaxed = variants.some((v) => v !== 'simd');
const pkgs = [
  ['pkg', resolve(a.pkg)],
  ...(threaded ? [['pkg-threads', resolve(a['pkg-threads'])]] : []),
  ...(relaxed && oursThreads.includes('1') ? [['pkg-relaxed', `${resolve(a.pkg)}-relaxed`]] : []),
  ...(relaxed && threaded ? [['pkg-threads-relaxed', `${resolve(a['pkg-threads'])}-relaxed`]] : []),
];
const mounts = {
  ...Object.fromEntries(pkgs.map(([p, dir]) => [`/${p}/`, dir])),
  // The same variants of the baseline build.
  ...(a.baseline ? Object.fromEntries(pkgs.map(([p]) => [`/base/${p}/`, join(resolve(a.baseline), p)])) : {}),
  ...(ortThreads.length ? { '/ort/': join(here, 'node_modules/onnxruntime-web/dist') } : {}),
  '/model/': resolve(a.model),
  ...(a['q8-model'] ? { '/model-q8/': resolve(a['q8-model']) } : {}),
  '/bench/': here,
};
const single = {
  ...(a.onnx ? { '/onnx/model.onnx': resolve(a.onnx) } : {}),
  ...(a['onnx-q8'] ? { '/onnx/model_q8.onnx': resolve(a['onnx-q8']) } : {}),
};
for (const [p, dir] of Object.entries({ ...mounts, ...single })) {
  try {
    statSync(dir);
  } catch {
    console.error(`missing ${dir} (for ${p}); see the usage at the top of this script`);
    process.exit(2);
  }
}
const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
};
function fileFor(url) {
  const path = decodeURIComponent(new URL(url, 'http://x').pathname);
  if (single[path]) return single[path];
  for (const [prefix, dir] of Object.entries(mounts)) {
    if (path.startsWith(prefix)) {
      const f = normalize(join(dir, path.slice(prefix.length)));
      return f.startsWith(dir) ? f : null;
    }
  }
  return null;
}
const server = createServer((req, res) => {
  const f = fileFor(req.url);
  let st = null;
  try {
    st = f && statSync(f);
  } catch {}
  if (!st || !st.isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, {
    'Content-Type': MIME[extname(f)] ?? 'application/octet-stream',
    'Content-Length': st.size,
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Cross-Origin-Embedder-Policy': 'require-corp',
    'Cross-Origin-Resource-Policy': 'same-origin',
    'Cache-Control': 'no-store',
  });
  createReadStream(f).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

// playwright gives every launch a fresh, temporary profile (the --user-data-dir the guide asks for).
const browser = await chromium.launch({
  executablePath: a.chromium,
  headless: true,
  args: CHROMIUM_FLAGS,
});

async function block(peer, threads, task = 'image', variant = 'simd') {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[${peer}/${threads}] page error: ${e}`));
  const pool = String(threads).endsWith('p') ? 1 : 0;
  await page.goto(`${base}/bench/bench.html?peer=${peer}&task=${task}&threads=${parseInt(threads)}&pool=${pool}&runs=${runs}&size=${a.size}&surgery=${a.surgery}&load=${a.load}&variant=${variant}`);
  await page.waitForFunction(() => window.__bench, null, { timeout: 30 * 60_000, polling: 500 });
  const r = await page.evaluate(() => window.__bench);
  await page.close();
  if (r.error) throw new Error(`${peer} ${task} with ${threads} thread(s): ${r.error}`);
  if (!r.crossOriginIsolated) throw new Error('the bench page is not cross-origin isolated');
  return r;
}

// [peer, threads, variant]: our f32 (and q8) checkpoint per module variant, then the peers.
// --q8-only: only our q8 checkpoint (--model is then still served but not timed).
const ownPeers = a['q8-model'] ? (a['q8-only'] ? ['oursq8'] : ['ours', 'oursq8']) : ['ours'];
const oursPeers = a.baseline ? ownPeers.flatMap((p) => [p, p.replace('ours', 'base')]) : ownPeers;
const isOurs = (p) => p.startsWith('ours') || p.startsWith('base');
const configs = [
  ...oursPeers.flatMap((p) => variants.flatMap((v) => oursThreads.map((t) => [p, t, v]))),
  ...ortThreads.map((t) => ['ort', t, 'simd']),
  ...(a['onnx-q8'] ? ortThreads.map((t) => ['ortq8', t, 'simd']) : []),
];
const keyOf = (p, t, v) => (isOurs(p) ? `${p}-${v}/${t}` : `${p}/${t}`);
const textResults = Object.fromEntries(oursThreads.map((t) => [t, []]));
const results = Object.fromEntries(configs.map(([p, t, v]) => [keyOf(p, t, v), []]));
let embeds = {};
try {
  for (let round = 0; round < rounds; round++) {
    const order = configs.map((_, i) => configs[(i + round) % configs.length]);
    for (const [peer, t, v] of order) {
      const r = await block(peer, t, 'image', v);
      const key = keyOf(peer, t, v);
      if (isOurs(peer) && r.variant !== v) throw new Error(`${key}: the page ran the ${r.variant} module`);
      results[key].push(r.medianMs);
      embeds[key] = r.embeds;
      const mem = r.wasmMemoryBytes ? `, wasm memory ${(r.wasmMemoryBytes / 2 ** 20).toFixed(0)} MiB` : '';
      const ready = isOurs(peer) ? `, ${r.load} load: image tower ready at ${r.readyMs.toFixed(0)} ms, int8 dot ${r.int8Dot}` : '';
      console.error(`round ${round + 1}/${rounds} ${key} thread(s): median ${r.medianMs.toFixed(1)} ms (load ${r.loadMs.toFixed(0)} ms${ready}${mem})`);
    }
    if (a.text) {
      for (const t of oursThreads) {
        const r = await block('ours', t, 'text');
        textResults[t].push(r.medianMs);
        console.error(`round ${round + 1}/${rounds} ours text ${t} thread(s): median ${r.medianMs.toFixed(1)} ms`);
      }
    }
  }
} finally {
  await browser.close();
  server.close();
}

const median = (xs) => {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
// Every configuration against the first onnxruntime-web fp32 one (same pixels, same weights),
// or our first f32 one without that peer.
const refKey = Object.keys(embeds).find((k) => k.startsWith('ort/')) ?? Object.keys(embeds)[0];
const maxDiff = {};
for (const [key, e] of Object.entries(embeds)) {
  if (!refKey || key === refKey) continue;
  maxDiff[key] = e.reduce((m, v, i) => Math.max(m, Math.abs(v - embeds[refKey][i])), 0);
}
/** A module variant as the table names it. */
const VARIANT = { simd: 'SIMD', relaxed: 'SIMD + relaxed', 'relaxed-dot': 'SIMD + relaxed, relaxed int8 dot', 'simd128-dot': 'SIMD + relaxed, SIMD128 int8 dot' };
const NAMES = {
  ours: (v) => `anoscope wasm f32 (${VARIANT[v]})`,
  oursq8: (v) => `anoscope wasm q8 (${VARIANT[v]})`,
  base: (v) => `baseline build, wasm f32 (${VARIANT[v]})`,
  baseq8: (v) => `baseline build, wasm q8 (${VARIANT[v]})`,
  ort: () => 'onnxruntime-web 1.30 fp32 (wasm SIMD)',
  ortq8: () => 'onnxruntime-web 1.30 q8, transformers.js-style (wasm SIMD)',
};
const msOf = (k) => (results[k]?.length ? median(results[k]) : NaN);
const rows = configs.map(([p, t, v]) => ({ peer: NAMES[p](v), key: keyOf(p, t, v), threads: t, ms: msOf(keyOf(p, t, v)) }));
const fmt = (x) => (Number.isFinite(x) ? x.toFixed(2) : '—');
console.log(`\nViT image tower, ${a.size} px, batch 1, headless Chromium; median of ${rounds} rounds × ${runs} runs`);
console.log('| runtime | threads | ms / image | ÷ ORT-web fp32 | ÷ ORT-web q8 |');
console.log('|---|---|---|---|---|');
for (const r of rows) {
  const t = parseInt(r.threads);
  console.log(`| ${r.peer} | ${r.threads} | ${r.ms.toFixed(0)} | ${fmt(r.ms / msOf(`ort/${t}`))} | ${fmt(r.ms / msOf(`ortq8/${t}`))} |`);
}
if (a.baseline) {
  console.log(`\nthis build ÷ the baseline build (${a.baseline}), same rounds:`);
  for (const [p, t, v] of configs.filter(([p]) => p.startsWith('ours'))) {
    const [mine, theirs] = [msOf(keyOf(p, t, v)), msOf(keyOf(p.replace('ours', 'base'), t, v))];
    console.log(`  ${NAMES[p](v)}, ${t} thread(s): ${mine.toFixed(0)} ÷ ${theirs.toFixed(0)} ms = ${fmt(mine / theirs)}`);
  }
}
for (const [key, d] of Object.entries(maxDiff)) console.log(`image_embeds max|Δ| ${key} vs ${refKey}: ${d.toExponential(2)}`);
if (a.text) {
  for (const t of oursThreads) console.log(`text tower, one prompt (tokenizer included), ${t} thread(s): ${median(textResults[t]).toFixed(1)} ms`);
}
if (a.json) {
  const out = { size: Number(a.size), runs, rounds, variants, results, rows, maxDiff, text: a.text ? textResults : undefined };
  writeFileSync(a.json, JSON.stringify(out, null, 2));
}
