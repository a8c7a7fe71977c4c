#!/usr/bin/env node
// Native soak (issue 20 §1): one `anoscope eval` process over every category of a datasets root
// twice (each category is linked in twice, as p1_<name> and p2_<name>, so one process scores the
// whole set two times in a row), sampling its resident memory; or, with --detect N, one
// `anoscope detect` over N images (the dataset's test images repeated, linked under unique names).
// A bench script, not a timed test.
//
//   cargo build --release -p anoscope --bin anoscope
//   node tests/soak/native_soak.mjs [--model DIR] [--datasets /work/shared/datasets] [--mode fast]
//        [--interval 2] [--detect N] [--out PREFIX]
//   --model defaults to a random full-size ViT-B/16 ($TMPDIR/anoscope-soak-vitb16, written by
//   `anoscope random-weights --arch vit-b-16 --seed 0` when missing). The CLI runs under nice -n 5.
//
// Sampled every --interval s: VmRSS and VmHWM of the process (/proc/PID/status), the number of
// images finished (files in maps/ for eval, *.json for detect) and the 1-minute load average.
// The bound (exit status 1 when exceeded): the second half (pass 2 / the second half of the
// detect images; the first half is the warm-up) never has a resident memory above the first
// half's peak + max(5 %, 16 MB), and the second half does not raise the process's VmHWM (its
// peak, which also holds the checkpoint load) by more than max(5 %, 16 MB).
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const { values: a } = parseArgs({
  options: {
    model: { type: 'string', default: join(tmpdir(), 'anoscope-soak-vitb16') },
    datasets: { type: 'string', default: '/work/shared/datasets' },
    mode: { type: 'string', default: 'fast' },
    interval: { type: 'string', default: '2' },
    detect: { type: 'string' },
    out: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const target = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
const CLI = join(target, 'release', 'anoscope');
if (!existsSync(CLI)) throw new Error(`${CLI} missing: cargo build --release -p anoscope --bin anoscope`);
const detectN = a.detect ? Number(a.detect) : 0;
const kind = detectN ? `detect-${detectN}` : `eval-x2-${a.mode}`;
const outPrefix = a.out ?? join(ROOT, 'tests', 'soak', 'out', `native-${kind}`);
mkdirSync(join(outPrefix, '..'), { recursive: true });
const log = (...m) => console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...m);

if (!existsSync(join(a.model, 'model.safetensors')) && !existsSync(join(a.model, 'open_clip_model.safetensors'))) {
  log(`writing a random ViT-B/16 checkpoint to ${a.model}`);
  execFileSync(CLI, ['random-weights', '--arch', 'vit-b-16', '--seed', '0', '--out', a.model], { stdio: 'inherit' });
}

const work = mkdtempSync(join(tmpdir(), 'anoscope-native-soak-'));
const out = join(work, 'out');
const cats = readdirSync(a.datasets, { withFileTypes: true })
  .filter((e) => e.isDirectory() && existsSync(join(a.datasets, e.name, 'test')))
  .map((e) => e.name)
  .sort();
if (cats.length === 0) throw new Error(`${a.datasets}: no <category>/test folders`);
let args;
let total;
const IMAGE = /\.(png|jpe?g|bmp)$/i;
const walk = (dir, acc = []) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, acc);
    else if (IMAGE.test(e.name)) acc.push(p);
  }
  return acc;
};
if (detectN) {
  const imgs = cats.flatMap((c) => walk(join(a.datasets, c, 'test')).sort());
  const dir = join(work, 'images');
  mkdirSync(dir);
  const list = [];
  for (let i = 0; i < detectN; i += 1) {
    const src = imgs[i % imgs.length];
    const dst = join(dir, `${String(i).padStart(5, '0')}_${basename(src)}`);
    symlinkSync(src, dst);
    list.push(dst);
  }
  total = detectN;
  args = ['detect', '--model', a.model, '--category', 'object', '--mode', a.mode, '--out', out, ...list];
} else {
  const root = join(work, 'datasets');
  mkdirSync(root);
  for (const pass of [1, 2]) for (const c of cats) symlinkSync(join(a.datasets, c), join(root, `p${pass}_${c}`));
  total = 2 * cats.reduce((n, c) => n + walk(join(a.datasets, c, 'test')).length, 0);
  args = ['eval', '--model', a.model, '--dataset', root, '--mode', a.mode, '--out', out];
}
log(`${CLI} ${args.slice(0, 8).join(' ')} … (${total} images; categories: ${cats.join(', ')})`);

// The commit at the start (a commit made while the soak runs does not change what ran).
const commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
const t0 = Date.now();
const child = spawn('nice', ['-n', '5', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
let stdout = '';
let stderr = '';
child.stdout.on('data', (d) => (stdout += d));
child.stderr.on('data', (d) => (stderr += d));
const exited = new Promise((res) => child.on('exit', (code, sig) => res({ code, sig })));

// `nice` execs the CLI, so the child's pid is the CLI's.
const status = () => {
  try {
    const s = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    return { rss: Number(s.match(/VmRSS:\s+(\d+)/)[1]) * 1024, hwm: Number(s.match(/VmHWM:\s+(\d+)/)[1]) * 1024 };
  } catch {
    return null;
  }
};
const countDone = () => {
  try {
    return readdirSync(out).filter((f) => f.endsWith('.json')).length;
  } catch {
    return 0;
  }
};
const countMaps = () => {
  try {
    const maps = join(out, 'maps');
    return existsSync(maps) ? readdirSync(maps, { recursive: true }).filter((f) => String(f).endsWith('.safetensors')).length : 0;
  } catch {
    return 0;
  }
};
const samples = [];
let done = false;
exited.then(() => (done = true));
let lastHwm = 0;
while (!done) {
  const s = status();
  if (s) {
    lastHwm = s.hwm;
    const n = detectN ? countDone() : countMaps();
    samples.push({ t: Number(((Date.now() - t0) / 1000).toFixed(1)), rss: s.rss, hwm: s.hwm, images: n, load1: Number(loadavg()[0].toFixed(2)) });
    if (samples.length % 15 === 1) log(`t=${samples.at(-1).t}s rss ${(s.rss / 2 ** 20).toFixed(1)} MB hwm ${(s.hwm / 2 ** 20).toFixed(1)} MB images ${n}/${total}`);
  }
  await Promise.race([exited, new Promise((r) => setTimeout(r, Number(a.interval) * 1000))]);
}
const { code, sig } = await exited;
const seconds = (Date.now() - t0) / 1000;
const uptime = execFileSync('uptime', { encoding: 'utf8' }).trim();
log(`exit ${code ?? sig} after ${seconds.toFixed(0)} s; ${uptime}`);
if (code !== 0) console.error(stderr.slice(-4000));

const mb = (b) => (b / 2 ** 20).toFixed(1);
// eval: the halves by images finished. detect writes every output at the end (it decodes all
// its images into one tensor first and keeps every result until then: see the README), so its
// halves are by time, the first 10 % (the checkpoint load) left out.
const half = total / 2;
const tEnd = samples.at(-1)?.t ?? 0;
const first = detectN ? samples.filter((s) => s.t >= 0.1 * tEnd && s.t < 0.55 * tEnd) : samples.filter((s) => s.images < half && s.images > 0);
const second = detectN ? samples.filter((s) => s.t >= 0.55 * tEnd) : samples.filter((s) => s.images >= half);
const peak1 = Math.max(...first.map((s) => s.rss));
const limit = peak1 + Math.max(0.05 * peak1, 16 * 2 ** 20);
const peak2 = Math.max(...second.map((s) => s.rss));
const hwm1 = first.at(-1)?.hwm ?? 0;
const checks = [
  { name: 'exit status 0', ok: code === 0, detail: `${code ?? sig}` },
  { name: 'samples in both halves', ok: first.length >= 3 && second.length >= 3, detail: `${first.length} and ${second.length}` },
  { name: 'RSS of the second half ≤ first half peak + max(5 %, 16 MB)', ok: peak2 <= limit, detail: `first-half peak ${mb(peak1)} MB, second-half peak ${mb(peak2)} MB, limit ${mb(limit)} MB` },
  {
    // VmHWM also holds the checkpoint load's peak (the file and its tensors, before scoring):
    // the second half must not raise it beyond the margin.
    name: 'VmHWM not raised by the second half beyond the margin',
    ok: lastHwm <= hwm1 + Math.max(0.05 * hwm1, 16 * 2 ** 20),
    detail: `${mb(hwm1)} MB at the end of the first half, ${mb(lastHwm)} MB at the end`,
  },
];
const ok = checks.every((c) => c.ok);

// The table: one row per tenth of the images (the sample nearest each step), plus the end.
const rows = [];
for (let k = 1; k <= 10; k += 1) {
  const want = Math.round((total * k) / 10);
  const s = detectN ? samples.find((x) => x.t >= (tEnd * k) / 10) : samples.find((x) => x.images >= want) ?? samples.at(-1);
  if (s && !rows.includes(s)) rows.push(s);
}
const meta = {
  kind,
  command: `anoscope ${args.slice(0, 8).join(' ')} …`,
  images: total,
  categories: cats,
  seconds,
  commit,
  date: new Date().toISOString(),
  cpu: `${cpus().length} × ${cpus()[0]?.model}`,
  uptime_end: uptime,
};
writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, checks, samples }, null, 1));
const md = [
  `${detectN ? `anoscope detect over ${total} images` : `anoscope eval over ${cats.length} categories twice (${total} images)`} in one process, --mode ${a.mode}, model ${a.model}; ${meta.date}, commit ${meta.commit}; ${meta.cpu}; ${seconds.toFixed(0)} s; ${uptime}`,
  '',
  '| t (s) | images done | VmRSS (MB) | VmHWM (MB) | load |',
  '|---:|---:|---:|---:|---:|',
  ...rows.map((s) => `| ${s.t} | ${s.images} | ${mb(s.rss)} | ${mb(s.hwm)} | ${s.load1} |`),
  '',
  ...checks.map((c) => `- ${c.ok ? 'ok' : '**FAILED**'} ${c.name}: ${c.detail}`),
  '',
].join('\n');
writeFileSync(`${outPrefix}.md`, md);
console.log(`\n${md}`);
if (!detectN && code === 0) console.log(stdout.split('\n').slice(-6).join('\n'));
log(`${ok ? 'bound holds' : 'BOUND EXCEEDED'}; ${outPrefix}.json, ${outPrefix}.md`);
if (!a.keep) rmSync(work, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
