#!/usr/bin/env node
// Browser benchmark: anoscope's wasm build vs onnxruntime-web on the same checkpoint, in
// headless Debian Chromium, cross-origin isolated (so onnxruntime-web may use threads).
//
//   ./build.sh build                                   # www/dist/pkg (our wasm)
//   npm --prefix tests/bench ci                        # onnxruntime-web (peer)
//   anoscope random-weights --arch vit-b-16 --seed 0 --out /tmp/vitb16
//   python tests/reference/export_onnx.py --checkpoint /tmp/vitb16 --out /tmp/vitb16.onnx
//   node tests/bench/browser_bench.mjs --model /tmp/vitb16 --onnx /tmp/vitb16.onnx \
//        [--runs 5] [--rounds 5] [--ours-threads 1,2] [--ort-threads 1,2] [--text] [--json out.json]
//   --text also times one prompt through our text tower (compare: tests/reference/bench_text.py)
//   --surgery K runs our pass with the CLIP Surgery path in the last K blocks (fast mode: half)
//   Our blocks also print the wasm linear memory after the runs (its peak: it never shrinks).
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
    pkg: { type: 'string', default: join(root, 'www/dist/pkg') },
    'pkg-threads': { type: 'string', default: join(root, 'www/dist/pkg-threads') },
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
const oursThreads = a['ours-threads'].split(',').filter(Boolean).map(Number);

const mounts = {
  '/pkg/': resolve(a.pkg),
  ...(oursThreads.some((t) => t > 1) ? { '/pkg-threads/': resolve(a['pkg-threads']) } : {}),
  ...(ortThreads.length ? { '/ort/': join(here, 'node_modules/onnxruntime-web/dist') } : {}),
  '/model/': resolve(a.model),
  '/bench/': here,
};
const single = a.onnx ? { '/onnx/model.onnx': resolve(a.onnx) } : {};
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

async function block(peer, threads, task = 'image') {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[${peer}/${threads}] page error: ${e}`));
  await page.goto(`${base}/bench/bench.html?peer=${peer}&task=${task}&threads=${threads}&runs=${runs}&size=${a.size}&surgery=${a.surgery}&load=${a.load}`);
  await page.waitForFunction(() => window.__bench, null, { timeout: 30 * 60_000, polling: 500 });
  const r = await page.evaluate(() => window.__bench);
  await page.close();
  if (r.error) throw new Error(`${peer} ${task} with ${threads} thread(s): ${r.error}`);
  if (!r.crossOriginIsolated) throw new Error('the bench page is not cross-origin isolated');
  return r;
}

const configs = [...oursThreads.map((t) => ['ours', t]), ...ortThreads.map((t) => ['ort', t])];
const textResults = Object.fromEntries(oursThreads.map((t) => [t, []]));
const results = Object.fromEntries(configs.map(([p, t]) => [`${p}/${t}`, []]));
let embeds = {};
try {
  for (let round = 0; round < rounds; round++) {
    const order = configs.map((_, i) => configs[(i + round) % configs.length]);
    for (const [peer, t] of order) {
      const r = await block(peer, t);
      results[`${peer}/${t}`].push(r.medianMs);
      embeds[`${peer}/${t}`] = r.embeds;
      const mem = r.wasmMemoryBytes ? `, wasm memory ${(r.wasmMemoryBytes / 2 ** 20).toFixed(0)} MiB` : '';
      const ready = peer === 'ours' ? `, ${r.load} load: image tower ready at ${r.readyMs.toFixed(0)} ms` : '';
      console.error(`round ${round + 1}/${rounds} ${peer} ${t} thread(s): median ${r.medianMs.toFixed(1)} ms (load ${r.loadMs.toFixed(0)} ms${ready}${mem})`);
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
const oursAt = (t) => median(results[`ours/${t}`] ?? results['ours/1']);
// Every configuration against the first onnxruntime-web one (same pixels, same weights).
const refKey = Object.keys(embeds).find((k) => k.startsWith('ort/'));
const maxDiff = {};
for (const [key, e] of Object.entries(embeds)) {
  if (!refKey || key === refKey) continue;
  maxDiff[key] = e.reduce((m, v, i) => Math.max(m, Math.abs(v - embeds[refKey][i])), 0);
}
const rows = configs.map(([p, t]) => {
  const ms = median(results[`${p}/${t}`]);
  return {
    peer: p === 'ours' ? 'anoscope wasm (SIMD)' : 'onnxruntime-web (wasm SIMD)',
    threads: t,
    ms,
    ratio: oursAt(t) / ms,
  };
});
console.log(`\nViT image tower, ${a.size} px, batch 1, headless Chromium; median of ${rounds} rounds × ${runs} runs`);
console.log('| runtime | threads | ms / image | ours ÷ this (same threads) |');
console.log('|---|---|---|---|');
for (const r of rows) {
  const ratio = r.peer.startsWith('anoscope') ? '—' : r.ratio.toFixed(2);
  console.log(`| ${r.peer} | ${r.threads} | ${r.ms.toFixed(0)} | ${ratio} |`);
}
for (const [key, d] of Object.entries(maxDiff)) console.log(`image_embeds max|Δ| ${key} vs ${refKey}: ${d.toExponential(2)}`);
if (a.text) {
  for (const t of oursThreads) console.log(`text tower, one prompt (tokenizer included), ${t} thread(s): ${median(textResults[t]).toFixed(1)} ms`);
}
if (a.json) {
  const out = { size: Number(a.size), runs, rounds, results, rows, maxDiff, text: a.text ? textResults : undefined };
  writeFileSync(a.json, JSON.stringify(out, null, 2));
}
