#!/usr/bin/env node
// Browser soak (issue 20 §1): a long webcam session or a long run of dropped photos in headless
// Debian Chromium, sampling memory and live-object counts every --interval seconds, then checking
// that nothing grows after the first minute. A bench script, not a timed test.
//
//   ./build.sh build                      # www/dist (wasm + page)
//   node tests/soak/browser_soak.mjs --minutes 10 --model test            # webcam, test model
//   node tests/soak/browser_soak.mjs --minutes 3 --model vitb16 [--checkpoint DIR]
//   node tests/soak/browser_soak.mjs --photos 500 --from DIR [--model test]
//   options: --interval S (30), --warmup S (60), --warmup-drops N (100), --sample-drops N (50),
//            --control S (60; 0 = no control page), --wasm-margin-mb M (0), --seed N (photo
//            order), --threads N (the page's ?threads=), --out PREFIX (PREFIX.json + PREFIX.md;
//            default tests/soak/out/<run>)
//
// --model vitb16 serves a full-size random ViT-B/16 (`anoscope random-weights --arch vit-b-16
// --seed 0`, written to --checkpoint, default $TMPDIR/anoscope-soak-vitb16, when missing) with
// the site as model "soak" and opens the page with ?model=soak, as tests/browser/bench.mjs does.
// --photos N copies N images (a fixed-seed mix of every image under --from, the largest of each
// folder first so the warm-up sees the biggest inputs) into a temp dir, then drops them one at a
// time on the page, each waiting for its heatmap.
//
// Measured from outside through DevTools (auto-attach reaches the workers), with no product hook:
//  - wasm memory: the byteLength of the worker's wasm memory (see workerWasm);
//  - JS heap: Runtime.getHeapUsage (used bytes) of the page, after HeapProfiler.collectGarbage,
//    and of the workers summed (no forced GC there: see workerWasm);
//  - live workers: dedicated worker targets attached (nested ones, the wasm thread pool,
//    included); the page's Worker objects made minus terminated (init-script wrapper) are logged;
//  - live object URLs and ImageBitmaps: URL.createObjectURL/revokeObjectURL and
//    createImageBitmap/ImageBitmap.close wrapped by an init script in the page (the worker makes
//    neither); open ImageBitmaps on the page's heap are also counted (Runtime.queryObjects);
//  - frame latency: the detail.ms of the page's own `anoscope:drawn` event (frame handed to the
//    worker → heatmap drawn; for a drop, drop → drawn);
//  - Chromium's resident memory (VmRSS of its processes, all and the largest renderer;
//    informative only).
//
// The bound (exit status 1 when exceeded), with v1 = the first sample at or after the warm-up
// (--warmup seconds of webcam, default 60; --warmup-drops photos, default 100):
//  - wasm memory of every sample after v1 ≤ v1 (wasm memory never shrinks: any growth is a leak
//    or a new high-water mark) + --wasm-margin-mb (default 0);
//  - JS heap (page, and workers summed) ≤ v1 + max(10 % of v1, 5 MB) at every later sample;
//  - live workers, object URLs and open ImageBitmaps ≤ v1 + 1 (one in flight) at every later
//    sample and back to ≤ v1 at the last;
//  - median frame latency of the last minute ≤ 1.2 × the median of the second minute (photos:
//    of the last --warmup-drops drops ≤ 1.2 × that of the drops just after the warm-up), or
//    ≤ 1.2 × a control's: a fresh page measured right after, under the same machine load.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, extname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, browser, loadTestModel, makeSite, openPage, ready, serve, waitLoaded } from '../browser/harness.mjs';

const { values: a } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    model: { type: 'string', default: 'test' },
    checkpoint: { type: 'string', default: join(tmpdir(), 'anoscope-soak-vitb16') },
    photos: { type: 'string' },
    from: { type: 'string' },
    interval: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '60' },
    'warmup-drops': { type: 'string', default: '100' },
    'sample-drops': { type: 'string', default: '50' },
    'wasm-margin-mb': { type: 'string', default: '0' },
    threads: { type: 'string', default: '' },
    seed: { type: 'string', default: '1' },
    control: { type: 'string', default: '60' },
    out: { type: 'string' },
  },
});
const minutes = Number(a.minutes);
const intervalS = Number(a.interval);
const warmupS = Number(a.warmup);
const warmupDrops = Number(a['warmup-drops']);
const sampleDrops = Number(a['sample-drops']);
const photos = a.photos ? Number(a.photos) : 0;
if (!['test', 'vitb16'].includes(a.model)) throw new Error(`--model ${a.model}: expected test or vitb16`);
if (photos && !a.from) throw new Error('--photos N needs --from DIR (images to copy and drop)');
const kind = photos ? 'photos' : 'webcam';
const outPrefix = a.out ?? join(ROOT, 'tests', 'soak', 'out', `${kind}-${a.model}${photos ? `-${photos}` : `-${minutes}min`}`);
mkdirSync(join(outPrefix, '..'), { recursive: true });
const log = (...m) => console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...m);

// ---------------------------------------------------------------------------
// the site

function vitb16Checkpoint(dir) {
  if (existsSync(join(dir, 'model.safetensors')) && existsSync(join(dir, 'config.json'))) return dir;
  const target = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
  const cli = [join(target, 'release', 'anoscope'), join(target, 'debug', 'anoscope')].find(existsSync);
  if (!cli) throw new Error('no anoscope CLI to write the random ViT-B/16: cargo build --release -p anoscope --bin anoscope');
  log(`writing a random ViT-B/16 checkpoint to ${dir} (${cli} random-weights)`);
  execFileSync(cli, ['random-weights', '--arch', 'vit-b-16', '--seed', '0', '--out', dir], { stdio: 'inherit' });
  return dir;
}

const site = makeSite();
let query = a.threads ? `?threads=${a.threads}` : '';
if (a.model === 'vitb16') {
  const dir = vitb16Checkpoint(a.checkpoint);
  mkdirSync(join(site, 'models', 'soak'), { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'prompts.safetensors']) {
    if (!existsSync(join(dir, f))) continue;
    try {
      linkSync(join(dir, f), join(site, 'models', 'soak', f));
    } catch {
      copyFileSync(join(dir, f), join(site, 'models', 'soak', f));
    }
  }
  execFileSync('node', [join(ROOT, 'tests', 'browser', 'site-index.mjs'), site], { stdio: 'inherit' });
  query = `?model=soak${a.threads ? `&threads=${a.threads}` : ''}`;
}

// ---------------------------------------------------------------------------
// the photos: a fixed-seed mix, the largest image of each folder first

const IMAGE = /\.(png|jpe?g|bmp|webp)$/i;
function walk(dir, out = []) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (IMAGE.test(e.name) && !/_mask\.png$/i.test(e.name)) out.push(p);
  }
  return out;
}
function pngSize(bytes) {
  // PNG IHDR width/height; other formats count by file size.
  if (bytes.length > 24 && bytes.readUInt32BE(0) === 0x89504e47) return bytes.readUInt32BE(16) * bytes.readUInt32BE(20);
  return bytes.length;
}
function mulberry32(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
let photoDir = null;
let photoList = [];
if (photos) {
  const all = walk(a.from).sort();
  if (all.length === 0) throw new Error(`${a.from}: no images`);
  const top = new Map(); // first-level folder → its largest image
  for (const p of all) {
    const group = p.slice(a.from.length).split('/').filter(Boolean)[0];
    const px = pngSize(readFileSync(p));
    if (!top.has(group) || top.get(group).px < px) top.set(group, { p, px });
  }
  const rnd = mulberry32(Number(a.seed));
  const order = [...[...top.values()].map((t) => t.p)];
  while (order.length < photos) order.push(all[Math.floor(rnd() * all.length)]);
  photoDir = mkdtempSync(join(tmpdir(), 'anoscope-soak-photos-'));
  photoList = order.slice(0, photos).map((p, i) => {
    const dst = join(photoDir, `${String(i).padStart(4, '0')}_${basename(p)}`);
    copyFileSync(p, dst);
    return dst;
  });
  const sizes = photoList.map((p) => statSync(p).size);
  log(`${photoList.length} photos copied to ${photoDir} (${all.length} distinct under ${a.from}; ${Math.min(...sizes)}–${Math.max(...sizes)} bytes)`);
}

// ---------------------------------------------------------------------------
// DevTools: the page's session, and worker sessions reached by auto-attach (messages wrapped in
// Target.sendMessageToTarget, as playwright-core's CDPSession has no flat child sessions)

class Child {
  constructor(parent, sessionId, info) {
    this.parent = parent;
    this.sessionId = sessionId;
    this.info = info;
    this.next = 1;
    this.pending = new Map();
  }
  send(method, params = {}) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.parent
        .send('Target.sendMessageToTarget', { sessionId: this.sessionId, message: JSON.stringify({ id, method, params }) })
        .catch((e) => {
          this.pending.delete(id);
          reject(e);
        });
    });
  }
  receive(msg) {
    const m = JSON.parse(msg);
    if (m.id && this.pending.has(m.id)) {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p.reject(new Error(`${p.method}: ${m.error.message}`));
      else p.resolve(m.result);
    } else if (m.method === 'Target.attachedToTarget') {
      // a nested worker (the wasm thread pool's) attached under this worker
      this.parent.emitChild(m.params, this);
    } else if (m.method === 'Target.detachedFromTarget') {
      this.parent.detached(m.params.sessionId);
    } else if (m.method === 'Target.receivedMessageFromTarget') {
      this.parent.route(m.params.sessionId, m.params.message);
    }
  }
  closeAll(why) {
    for (const p of this.pending.values()) p.reject(new Error(why));
    this.pending.clear();
  }
}

class Workers {
  constructor(cdp) {
    this.cdp = cdp;
    this.children = new Map(); // sessionId → Child
    cdp.on('Target.attachedToTarget', (p) => this.emitChild(p, null));
    cdp.on('Target.detachedFromTarget', (p) => this.detached(p.sessionId));
    cdp.on('Target.receivedMessageFromTarget', (p) => this.route(p.sessionId, p.message));
  }
  async start() {
    await this.cdp.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
  }
  route(sessionId, message) {
    this.children.get(sessionId)?.receive(message);
  }
  /** A worker attached: under the page (via = null) or under another worker (nested). */
  emitChild(p, via) {
    if (!/worker/.test(p.targetInfo.type)) return;
    const hub = {
      send: (m, params) => (via ? via.send(m, params) : this.cdp.send(m, params)),
      emitChild: (pp, v) => this.emitChild(pp, v),
      detached: (s) => this.detached(s),
      route: (s, msg) => this.route(s, msg),
    };
    const c = new Child(hub, p.sessionId, p.targetInfo);
    this.children.set(p.sessionId, c);
    // nested workers (the wasm thread pool) attach under this one
    c.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false }).catch(() => {});
  }
  detached(sessionId) {
    const c = this.children.get(sessionId);
    if (c) c.closeAll('detached');
    this.children.delete(sessionId);
  }
  live() {
    return [...this.children.values()];
  }
}

/** Live ImageBitmaps on the page's heap (queryObjects forces a GC first): [all, open]. */
async function pageBitmaps(s) {
  const bm = await s.send('Runtime.evaluate', { expression: 'ImageBitmap.prototype' });
  const q = await s.send('Runtime.queryObjects', { prototypeObjectId: bm.result.objectId, objectGroup: 'soak' });
  const r = await s.send('Runtime.callFunctionOn', {
    objectId: q.objects.objectId,
    functionDeclaration: 'function () { return [this.length, this.filter((b) => b.width > 0).length]; }',
    returnByValue: true,
  });
  await s.send('Runtime.releaseObjectGroup', { objectGroup: 'soak' });
  return r.result.value;
}

/**
 * The byteLength of the worker's wasm memory. The module-scope `wasm` of worker.js is not
 * reachable from the global scope, but importing the same glue URL again yields the same module
 * instance, and its init function returns the already-instantiated exports (memory among them)
 * without instantiating anything. (A forced GC, or Runtime.queryObjects, which collects first,
 * in worker.js during a webcam run with the thread pool's workers attached crashed Chromium
 * 156's renderer once and hung another time, so neither is used in the workers.)
 */
async function workerWasm(s) {
  const r = await s.send('Runtime.evaluate', {
    expression: `(async () => {
      const url = performance.getEntriesByType('resource').map((e) => e.name).find((n) => n.endsWith('/pkg/anoscope.js') || n.endsWith('/pkg-threads/anoscope.js'));
      if (!url) return -1;
      const m = await import(url);
      const ex = await m.default();
      return ex.memory.buffer.byteLength;
    })()`,
    awaitPromise: true,
    returnByValue: true,
  });
  if (r.exceptionDetails) throw new Error(`wasm memory: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
  return r.result.value;
}

/** Used JS heap; after a full GC where `gc` (the page: safe; workers: see workerWasm). */
async function heapUsed(s, gc) {
  if (gc) await s.send('HeapProfiler.collectGarbage');
  const h = await s.send('Runtime.getHeapUsage');
  // backingStorageSize: ArrayBuffer backing stores (outside usedSize), where Chromium reports it
  return { used: h.usedSize, backing: h.backingStorageSize ?? 0 };
}

/**
 * Resident memory of Chromium: VmRSS of the chrom* processes descended from this one, in all
 * and by process type (browser, renderer, gpu-process, utility, …).
 */
function chromiumRss() {
  const parent = new Map();
  const info = new Map();
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const st = readFileSync(`/proc/${pid}/status`, 'utf8');
      if (!/Name:\s+chrom/i.test(st)) {
        parent.set(pid, st.match(/PPid:\s+(\d+)/)[1]);
        continue;
      }
      parent.set(pid, st.match(/PPid:\s+(\d+)/)[1]);
      const type = readFileSync(`/proc/${pid}/cmdline`, 'utf8').match(/--type=([\w-]+)/)?.[1] ?? 'browser';
      info.set(pid, { type, rss: Number(st.match(/VmRSS:\s+(\d+) kB/)?.[1] ?? 0) * 1024 });
    } catch {
      /* gone */
    }
  }
  const me = String(process.pid);
  const ours = (pid) => {
    for (let p = pid, i = 0; p && p !== '0' && i < 20; p = parent.get(p), i += 1) if (p === me) return true;
    return false;
  };
  const byType = {};
  let total = 0;
  for (const [pid, { type, rss }] of info) {
    if (!ours(pid)) continue;
    total += rss;
    // the largest process of each type (the page's renderer is the largest renderer)
    byType[type] = Math.max(byType[type] ?? 0, rss);
  }
  return { total, byType };
}

// ---------------------------------------------------------------------------
// the run

const INIT = () => {
  const s = (window.__soak = { urls: new Set(), urlsMade: 0, bitmaps: 0, bitmapsMade: 0, workers: 0, workersMade: 0, drawn: [] });
  const create = URL.createObjectURL.bind(URL);
  const revoke = URL.revokeObjectURL.bind(URL);
  URL.createObjectURL = (o) => {
    const u = create(o);
    s.urls.add(u);
    s.urlsMade += 1;
    return u;
  };
  URL.revokeObjectURL = (u) => {
    s.urls.delete(u);
    return revoke(u);
  };
  if (typeof createImageBitmap === 'function') {
    const cib = window.createImageBitmap.bind(window);
    const closed = new WeakSet();
    window.createImageBitmap = async (...args) => {
      const b = await cib(...args);
      s.bitmaps += 1;
      s.bitmapsMade += 1;
      return b;
    };
    const close = ImageBitmap.prototype.close;
    ImageBitmap.prototype.close = function () {
      if (!closed.has(this)) {
        closed.add(this);
        s.bitmaps -= 1;
      }
      return close.call(this);
    };
  }
  const W = window.Worker;
  const dead = new WeakSet();
  window.Worker = class extends W {
    constructor(...args) {
      super(...args);
      s.workers += 1;
      s.workersMade += 1;
    }
    terminate() {
      if (!dead.has(this)) {
        dead.add(this);
        s.workers -= 1;
      }
      return super.terminate();
    }
  };
  document.addEventListener('anoscope:drawn', (e) => s.drawn.push([performance.now(), e.detail.ms]));
};

const median = (xs) => {
  if (!xs.length) return null;
  const v = [...xs].sort((x, y) => x - y);
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const quantile = (xs, q) => (xs.length ? [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(q * xs.length))] : null);
const mb = (b) => (b == null ? '–' : (b / 2 ** 20).toFixed(1));

/** Loads the run's model on a ready page. */
async function loadModel(page) {
  if (a.model === 'test') await loadTestModel(page);
  else await waitLoaded(page, '', { timeout: 900_000, complete: true });
}

/** Drops one photo on #drop; resolves to the drawn result's name or 'timeout; …'. */
async function dropOne(page, p) {
  const ext = extname(p).toLowerCase();
  const type = ext === '.png' ? 'image/png' : ext === '.bmp' ? 'image/bmp' : 'image/jpeg';
  return page.evaluate(
    async ({ name, type, b64 }) => {
      const drawn = new Promise((resolve) => document.addEventListener('anoscope:drawn', (e) => resolve(e.detail.name), { once: true }));
      const dt = new DataTransfer();
      dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
      const target = document.querySelector('#drop');
      target.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      const msg = () => (document.getElementById('message').hidden ? '' : document.getElementById('message').textContent);
      const timeout = new Promise((resolve) => setTimeout(() => resolve(`timeout; message: ${msg()}`), 300_000));
      return Promise.race([drawn, timeout]);
    },
    { name: basename(p), type, b64: readFileSync(p).toString('base64') },
  );
}

/**
 * The control for the latency check: a fresh browser and page right after the soak, under the
 * machine's load of that moment. Webcam: the median over --control seconds after its first
 * frames; photos: the median of the last --warmup-drops photos, dropped after the first ones.
 */
async function control(url) {
  const b2 = await browser({ fakeMedia: kind === 'webcam' });
  try {
    await b2.context.addInitScript(INIT);
    const { page } = await openPage(b2.context, url);
    await ready(page);
    await loadModel(page);
    if (kind === 'webcam') {
      await page.click('#webcam');
      await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 3, null, { timeout: 600_000 });
      await new Promise((r) => setTimeout(r, 10_000));
      await page.evaluate(() => window.__soak.drawn.splice(0));
      await new Promise((r) => setTimeout(r, Number(a.control) * 1000));
      const ms = await page.evaluate(() => window.__soak.drawn.splice(0).map(([, ms]) => ms));
      await page.click('#webcam');
      return ms;
    }
    for (const p of photoList.slice(0, warmupDrops)) await dropOne(page, p);
    await page.evaluate(() => window.__soak.drawn.splice(0));
    for (const p of photoList.slice(-warmupDrops)) await dropOne(page, p);
    return await page.evaluate(() => window.__soak.drawn.splice(0).map(([, ms]) => ms));
  } finally {
    await b2.close();
  }
}

// The commit at the start (a commit made while the soak runs does not change what ran).
const commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
const uptimeStart = execFileSync('uptime', { encoding: 'utf8' }).trim();
log(uptimeStart);
const server = await serve(site);
const b = await browser({ fakeMedia: kind === 'webcam' });
let exitCode = 0;
let bClosed = false;
const samples = [];
const frames = []; // [t seconds since start, ms]
const errors = [];
try {
  await b.context.addInitScript(INIT);
  const { page, problems } = await openPage(b.context, `${server.url}${query}`);
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  const cdp = await page.context().newCDPSession(page);
  const workers = new Workers(cdp);
  await workers.start();
  await cdp.send('Runtime.enable');
  await ready(page);
  const tLoad = Date.now();
  await loadModel(page);
  log(`${await page.textContent('#model-status')} (${((Date.now() - tLoad) / 1000).toFixed(1)} s); backend: ${await page.textContent('#backend')}`);
  const backend = await page.textContent('#backend');

  const t0 = Date.now();
  const pageT0 = await page.evaluate(() => performance.now());
  const elapsed = () => (Date.now() - t0) / 1000;
  let dropped = 0;
  let uptimeAt = '';

  async function sample() {
    const t = elapsed();
    const pageCounts = await page.evaluate(() => {
      const s = window.__soak;
      const drawn = s.drawn.splice(0);
      return { urls: s.urls.size, urlsMade: s.urlsMade, bitmaps: s.bitmaps, bitmapsMade: s.bitmapsMade, workers: s.workers, workersMade: s.workersMade, drawn };
    });
    for (const [at, ms] of pageCounts.drawn) frames.push([Number(((at - pageT0) / 1000).toFixed(2)), ms]);
    const { used: pageHeap, backing: pageBacking } = await heapUsed(cdp, true);
    const [bitmapsOnHeap, bitmapsOnHeapOpen] = await pageBitmaps(cdp);
    let workerHeap = 0;
    let workerBacking = 0;
    let wasm = 0;
    const workerTargets = workers.live().filter((w) => w.info.type === 'worker');
    for (const w of workerTargets) {
      try {
        const h = await heapUsed(w, false);
        workerHeap += h.used;
        workerBacking += h.backing;
        if (/\/worker\.js(\?|$)/.test(w.info.url)) wasm = await workerWasm(w);
      } catch (e) {
        errors.push(`sample worker ${w.info.url}: ${e.message}`);
      }
    }
    const [l1] = loadavg();
    const s = {
      t: Math.round(t),
      wasm,
      pageHeap,
      workerHeap,
      pageBacking,
      workerBacking,
      workers: workerTargets.length,
      pageWorkers: pageCounts.workers,
      objectUrls: pageCounts.urls,
      bitmapsOpen: pageCounts.bitmaps,
      bitmapsOnHeap,
      bitmapsOnHeapOpen,
      frames: pageCounts.drawn.length,
      medianMs: median(pageCounts.drawn.map(([, ms]) => ms)),
      p90Ms: quantile(pageCounts.drawn.map(([, ms]) => ms), 0.9),
      dropped,
      ...(({ total, byType }) => ({ chromiumRss: total, rendererRss: byType.renderer ?? 0, rssByType: byType }))(chromiumRss()),
      load1: Number(l1.toFixed(2)),
    };
    samples.push(s);
    log(
      `t=${s.t}s wasm ${mb(s.wasm)} MB heap page ${mb(s.pageHeap)} MB workers ${mb(s.workerHeap)} MB (ArrayBuffers page ${mb(s.pageBacking)} MB workers ${mb(s.workerBacking)} MB)` +
        ` | workers ${s.workers} (page-made ${s.pageWorkers}) urls ${s.objectUrls} bitmaps ${s.bitmapsOpen} (on the heap ${s.bitmapsOnHeapOpen} open of ${s.bitmapsOnHeap})` +
        ` | ${s.frames} results, median ${s.medianMs?.toFixed(0) ?? '–'} ms | rss ${mb(s.chromiumRss)} MB (renderer ${mb(s.rendererRss)}) load ${s.load1}`,
    );
  }

  if (kind === 'webcam') {
    await page.click('#webcam');
    await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 1, null, { timeout: 600_000 });
    await sample();
    const end = t0 + minutes * 60_000;
    let next = t0 + intervalS * 1000;
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, Math.max(0, Math.min(next, end) - Date.now())));
      if (Date.now() >= next) {
        await sample();
        next += intervalS * 1000;
      }
      if (errors.length === 0 && (await page.getAttribute('#webcam', 'aria-pressed')) !== 'true') {
        errors.push(`the webcam stopped: ${await page.textContent('#webcam-status')} ${await page.textContent('#message')}`);
        break;
      }
    }
    uptimeAt = execFileSync('uptime', { encoding: 'utf8' }).trim();
    await sample();
    const status = await page.textContent('#webcam-status');
    log(status);
    await page.click('#webcam');
  } else {
    await sample();
    let next = t0 + intervalS * 1000;
    for (const p of photoList) {
      const done = await dropOne(page, p);
      if (typeof done === 'string' && done.startsWith('timeout')) {
        errors.push(`${basename(p)}: ${done}`);
        break;
      }
      dropped += 1;
      const due = Date.now() >= next;
      if (due) next += intervalS * 1000;
      if (due || dropped % sampleDrops === 0 || dropped === warmupDrops) await sample();
    }
    uptimeAt = execFileSync('uptime', { encoding: 'utf8' }).trim();
    await sample();
  }
  if (problems.length) errors.push(...problems);
  const userAgent = await page.evaluate(() => navigator.userAgent);
  // The control page runs after this browser is closed (a second ViT-B/16 would not fit beside it).
  await b.close();
  bClosed = true;
  let controlMs = [];
  if (Number(a.control) > 0) {
    log('control: a fresh page under the present load');
    controlMs = await control(`${server.url}${query}`);
    log(`control: ${controlMs.length} results, median ${median(controlMs)?.toFixed(1)} ms; ${execFileSync('uptime', { encoding: 'utf8' }).trim()}`);
  }

  // -------------------------------------------------------------------------
  // the bound
  // The warm-up: the first --warmup seconds of a webcam run, the first --warmup-drops photos.
  const v1 = (kind === 'webcam' ? samples.find((s) => s.t >= warmupS) : samples.find((s) => s.dropped >= warmupDrops)) ?? samples.at(-1);
  const after = samples.filter((s) => s.t > v1.t);
  const last = samples.at(-1);
  const checks = [];
  const check = (name, ok, detail) => checks.push({ name, ok, detail });
  const wasmMargin = Number(a['wasm-margin-mb']) * 2 ** 20;
  const wasmMax = Math.max(v1.wasm, ...after.map((s) => s.wasm));
  check('wasm memory', v1.wasm > 0 && wasmMax <= v1.wasm + wasmMargin, `${mb(v1.wasm)} MB at ${v1.t} s, max after ${mb(wasmMax)} MB (margin ${mb(wasmMargin)} MB)`);
  for (const key of ['pageHeap', 'workerHeap']) {
    const lim = v1[key] + Math.max(0.1 * v1[key], 5 * 2 ** 20);
    const mx = Math.max(v1[key], ...after.map((s) => s[key]));
    check(`JS heap (${key === 'pageHeap' ? 'page' : 'workers'})`, mx <= lim, `${mb(v1[key])} MB at ${v1.t} s, max after ${mb(mx)} MB, limit ${mb(lim)} MB`);
  }
  for (const key of ['workers', 'objectUrls', 'bitmapsOpen', 'bitmapsOnHeapOpen']) {
    const mx = Math.max(v1[key], ...after.map((s) => s[key]));
    check(`live ${key}`, mx <= v1[key] + 1 && last[key] <= v1[key], `${v1[key]} at ${v1.t} s, max after ${mx}, last ${last[key]}`);
  }
  // Latency: the second minute against the last minute (webcam); drops warmup..2×warmup against
  // the last warmup drops (photos).
  let second;
  let lastWin;
  let what;
  if (kind === 'webcam') {
    const lastT = frames.length ? frames.at(-1)[0] : 0;
    second = frames.filter(([t]) => t > 60 && t <= 120).map(([, ms]) => ms);
    lastWin = frames.filter(([t]) => t > lastT - 60).map(([, ms]) => ms);
    what = ['minute 2', 'the last minute'];
  } else {
    second = frames.slice(warmupDrops, 2 * warmupDrops).map(([, ms]) => ms);
    lastWin = frames.slice(-warmupDrops).map(([, ms]) => ms);
    what = [`drops ${warmupDrops + 1}–${2 * warmupDrops}`, `the last ${warmupDrops} drops`];
  }
  const m2 = median(second);
  const mL = median(lastWin);
  // A busy shared machine moves latency as much as a leak would: the last window also passes
  // when it is within 1.2 × a fresh page's median measured right after (the control).
  const mC = median(controlMs);
  const ref = Math.max(m2 ?? 0, mC ?? 0);
  check(
    'frame latency',
    m2 != null && mL != null && mL <= 1.2 * ref,
    `median ${m2?.toFixed(1)} ms in ${what[0]} (${second.length} results), ${mL?.toFixed(1)} ms in ${what[1]} (${lastWin.length}); ` +
      `fresh page right after: ${mC?.toFixed(1) ?? '–'} ms (${controlMs.length}); limit 1.2 × ${ref.toFixed(1)} = ${(1.2 * ref).toFixed(1)} ms`,
  );
  check('no errors', errors.length === 0, errors.slice(0, 5).join(' | ') || 'none');
  const ok = checks.every((c) => c.ok);
  exitCode = ok ? 0 : 1;

  const meta = {
    kind,
    model: a.model,
    minutes: kind === 'webcam' ? minutes : null,
    photos: photos || null,
    dropped,
    interval_s: intervalS,
    warmup: kind === 'webcam' ? `${warmupS} s` : `${warmupDrops} drops`,
    backend,
    browser: userAgent,
    commit,
    date: new Date().toISOString(),
    cpu: `${cpus().length} × ${cpus()[0]?.model}`,
    uptime_start: uptimeStart,
    uptime_end: uptimeAt,
    results: frames.length,
    control_median_ms: mC,
    control_results: controlMs.length,
  };
  // Raw latencies for a photo run (one per drop); a webcam run keeps its per-sample medians only.
  writeFileSync(`${outPrefix}.json`, JSON.stringify({ meta, checks, samples, frames: kind === 'photos' ? frames : undefined }, null, 1));
  const md = [
    `${kind === 'webcam' ? `Webcam fast mode, ${minutes} min` : `${dropped} dropped photos`}, model ${a.model}, ${backend}; ${meta.date}, commit ${meta.commit}; ${meta.cpu}; at the start: ${uptimeStart}; at the end: ${uptimeAt}`,
    '',
    '| t (s) | wasm (MB) | JS heap page (MB) | JS heap workers (MB) | workers | object URLs | ImageBitmaps | results | median ms | p90 ms | Chromium RSS (MB) | renderer RSS (MB) | load |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...samples.map(
      (s) =>
        `| ${s.t} | ${mb(s.wasm)} | ${mb(s.pageHeap)} | ${mb(s.workerHeap)} | ${s.workers} | ${s.objectUrls} | ${s.bitmapsOpen} | ${kind === 'photos' ? `${s.frames} (${s.dropped} total)` : s.frames} | ${s.medianMs?.toFixed(0) ?? '–'} | ${s.p90Ms?.toFixed(0) ?? '–'} | ${mb(s.chromiumRss)} | ${mb(s.rendererRss)} | ${s.load1} |`,
    ),
    '',
    ...checks.map((c) => `- ${c.ok ? 'ok' : '**FAILED**'} ${c.name}: ${c.detail}`),
    '',
  ].join('\n');
  writeFileSync(`${outPrefix}.md`, md);
  console.log(`\n${md}`);
  log(`${ok ? 'bound holds' : 'BOUND EXCEEDED'}; ${outPrefix}.json, ${outPrefix}.md`);
} catch (e) {
  console.error(e);
  exitCode = 2;
} finally {
  if (!bClosed) await b.close();
  server.stop();
  if (photoDir) rmSync(photoDir, { recursive: true, force: true });
}
process.exit(exitCode);
