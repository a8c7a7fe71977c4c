// Shared by the npm-package tests: the package packed from www/dist and installed from its tarball
// into tests/embed/node_modules, plain static servers (no COOP/COEP unless asked, optional CSP and
// CORS) that log every request with its size, the test model served from another origin, and the
// main page's result for an image (the reference the embedded detector must match).
import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pack } from '../../packages/anoscope/assemble.mjs';
import { DIST, browser, loadTestModel, makeSite, openPage, ready, serve } from '../browser/harness.mjs';

export const EMBED = dirname(fileURLToPath(import.meta.url));
export const TEST_MODEL_DIR = join(DIST, 'models', 'test-tiny');
/** A real photo (MVTec AD bottle, see tests/browser/images/NOTICE.md) as the tests drop it. */
export const PHOTO = {
  name: 'bottle_broken_large_000.png',
  type: 'image/png',
  bytes: readFileSync(join(EMBED, '..', 'browser', 'images', 'bottle_broken_large_000.png')),
};

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
  '.safetensors': 'application/octet-stream',
};

/**
 * Serves `mounts` ({'/url/prefix/': '/dir'}, longest prefix first) on 127.0.0.1 at a free port.
 * headers: extra response headers (CSP, COOP/COEP); cors: Access-Control-Allow-Origin: *.
 * Resolves to {url, origin, log: [{method, path, status, bytes}], stop}.
 */
export function staticServer(mounts, { headers = {}, cors = false } = {}) {
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  const log = [];
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const entry = { method: req.method, path, status: 404, bytes: 0 };
    log.push(entry);
    const common = { ...headers, ...(cors ? { 'access-control-allow-origin': '*' } : {}) };
    const prefix = prefixes.find((p) => path.startsWith(p));
    let file = prefix ? normalize(join(mounts[prefix], path.slice(prefix.length))) : null;
    if (file && !file.startsWith(normalize(mounts[prefix]) + sep) && file !== normalize(mounts[prefix])) file = null;
    if (file && existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain', ...common });
      res.end('not found');
      return;
    }
    const size = statSync(file).size;
    entry.status = 200;
    entry.bytes = req.method === 'HEAD' ? 0 : size;
    res.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': size,
      'cache-control': 'no-cache',
      ...common,
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const origin = `http://127.0.0.1:${server.address().port}`;
      resolve({
        url: `${origin}/`,
        origin,
        log,
        stop: () => new Promise((done) => server.close(() => done())),
      });
    });
  });
}

/** The test model (random weights) served with CORS from its own origin: {url (the folder), origin, log, stop}. */
export async function modelServer() {
  if (!existsSync(join(TEST_MODEL_DIR, 'model.safetensors'))) throw new Error(`${TEST_MODEL_DIR} missing: run ./build.sh build`);
  const s = await staticServer({ '/checkpoints/test-tiny/': TEST_MODEL_DIR }, { cors: true });
  return { ...s, folder: `${s.url}checkpoints/test-tiny/` };
}

/**
 * Packs www/dist into a temp folder: {tarball, stage (the unpacked package), version, packed,
 * unpacked, files, cleanup}.
 */
export async function packPackage() {
  const out = mkdtempSync(join(tmpdir(), 'anoscope-npm-'));
  const r = await pack(DIST, out);
  return { ...r, cleanup: () => rmSync(out, { recursive: true, force: true }) };
}

/**
 * Installs the tarball into tests/embed/node_modules with npm (offline: nothing else changes) and
 * returns the installed package.json. npm reads package-lock.json for the tools already there
 * (`--no-save` leaves it and package.json as they are): without it (`--no-package-lock`) npm asks
 * the registry for vite's and vitepress's manifests, which the cache of a fresh machine, filled by
 * `npm ci` with tarballs only, does not hold, and `--offline` then fails with ENOTCACHED.
 */
export function installTarball(tarball) {
  execFileSync(
    'npm',
    ['install', '--no-save', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball],
    { cwd: EMBED, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' },
  );
  return JSON.parse(readFileSync(join(EMBED, 'node_modules', 'anoscope', 'package.json'), 'utf8'));
}

/** Runs a tool of tests/embed/node_modules/.bin (vitepress, vite). */
export function bin(name, args, env = {}) {
  return execFileSync(join(EMBED, 'node_modules', '.bin', name), args, {
    cwd: EMBED,
    env: { ...process.env, ...env },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/**
 * The main page's result for PHOTO with the interface test model (served by `anoscope serve`,
 * cross-origin isolated): {score, map (plain array), ms (drop → drawn, in the page)}.
 */
export async function mainPageResult(photo = PHOTO) {
  const server = await serve(makeSite());
  const b = await browser();
  try {
    const { page } = await openPage(b.context, server.url);
    await ready(page);
    await loadTestModel(page);
    // Drop → drawn, measured in the page as dropOnElement measures the element (best of the
    // last three; the first drop also encodes the prompts).
    const runs = [];
    for (let i = 0; i < 4; i += 1) runs.push(await dropOnMainPage(page, photo));
    const last = runs[runs.length - 1];
    return { score: last.score, map: last.map, ms: Math.min(...runs.slice(1).map((r) => r.ms)) };
  } finally {
    await b.close();
    server.stop();
  }
}

/** Drops `photo` on the main page's drop zone: {score, map (array), ms (drop → anoscope:drawn)}. */
function dropOnMainPage(page, photo) {
  return page.evaluate(
    ({ b64, name, type }) =>
      new Promise((resolve) => {
        const dt = new DataTransfer();
        dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
        const t0 = performance.now();
        document.addEventListener(
          'anoscope:drawn',
          (e) => resolve({ score: e.detail.score, map: Array.from(e.detail.map), ms: performance.now() - t0 }),
          { once: true },
        );
        const target = document.querySelector('#drop');
        target.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
        target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      }),
    { b64: Buffer.from(photo.bytes).toString('base64'), name: photo.name, type: photo.type },
  );
}

/**
 * In the page: drops `photo` on `selector` (an <anomaly-detector>) and resolves to the next
 * `anomaly-score` detail {score, map (array), width, height, ms (drop → event)}.
 */
export async function dropOnElement(page, selector, photo = PHOTO) {
  return page.evaluate(
    ({ selector, b64, name, type }) =>
      new Promise((resolve, reject) => {
        const el = document.querySelector(selector);
        const dt = new DataTransfer();
        dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
        const t0 = performance.now();
        el.addEventListener(
          'anomaly-score',
          (e) => resolve({ ...e.detail, map: Array.from(e.detail.map), ms: performance.now() - t0 }),
          { once: true },
        );
        el.addEventListener('anomaly-error', (e) => reject(new Error(e.detail.message)), { once: true });
        el.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
        el.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
        el.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      }),
    { selector, b64: Buffer.from(photo.bytes).toString('base64'), name: photo.name, type: photo.type },
  );
}

/** The largest |a[i] − b[i]| (lengths must match). */
export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`maps differ in length: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i += 1) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export { browser, openPage };
