// Shared setup for the browser suite: a copy of the built site served by the project's own
// server (`anoscope serve --port 0`), Debian's Chromium driven by playwright-core (never a
// downloaded browser), request recording and CSP-violation collection.
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DIST = join(ROOT, 'www', 'dist');
export const IMAGES = join(ROOT, 'tests', 'browser', 'images');
export const CHROMIUM = process.env.ANOSCOPE_CHROMIUM || '/usr/bin/chromium';
const TARGET = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
export const CLI = join(TARGET, 'debug', 'anoscope');

// --enable-unsafe-webgpu: Chromium 148 on Linux offers WebGPU only with it (headless, it is the
// CPU SwiftShader adapter: no shader-f16; webgpu.test.mjs forces it with ?backend=gpu).
export const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--enable-unsafe-webgpu',
];
export const FAKE_MEDIA_FLAGS = ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'];

export const TEST_MODEL_BUTTON = 'Use the interface test model (random weights, meaningless scores)';

/** Runs the native CLI (built by cargo test / ./build.sh). */
export function cli(...args) {
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: cargo build -p anoscope --bin anoscope`);
  return execFileSync(CLI, args, { encoding: 'utf8' });
}

/** A private copy of www/dist (so tests may add files) in a temp dir; `extra` maps path -> bytes. */
export function makeSite(extra = {}) {
  if (!existsSync(join(DIST, 'build.json'))) throw new Error(`${DIST} is not built: run ./build.sh build first`);
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-site-'));
  cpSync(DIST, dir, { recursive: true });
  for (const [rel, bytes] of Object.entries(extra)) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), bytes);
  }
  return dir;
}

/**
 * Starts `anoscope serve --dir DIR --port 0` (or `port`: to serve again at the same origin after
 * kill()); resolves to {url, log, stop}. `log` holds every request line.
 */
export function serve(dir, { port = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, ['serve', '--dir', dir, '--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = [];
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      const lines = err.split('\n');
      err = lines.pop();
      log.push(...lines.filter((l) => /^(GET|HEAD|POST|PUT|DELETE|OPTIONS) /.test(l)));
    });
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) {
        resolve({
          url: m[1],
          log,
          /** Stops the server, keeping the site directory (the "network" goes away); resolves once it exited. */
          kill: () =>
            new Promise((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              child.once('exit', () => done());
              child.kill();
            }),
          stop: () => {
            child.kill();
            rmSync(dir, { recursive: true, force: true });
          },
        });
      }
    });
    child.on('exit', (code) => reject(new Error(`anoscope serve exited (${code}): ${out}${err}`)));
    child.on('error', reject);
  });
}

/** A fresh Chromium profile (mkdtemp) with the suite's flags. */
export async function browser({ fakeMedia = false, fakeCameraOnly = false, permissions } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'anoscope-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    // fakeCameraOnly: a camera exists, but nothing grants it (the permission request is denied).
    args: [
      ...CHROMIUM_FLAGS,
      ...(fakeMedia ? FAKE_MEDIA_FLAGS : []),
      ...(fakeCameraOnly ? ['--use-fake-device-for-media-stream'] : []),
    ],
    viewport: { width: 1100, height: 1400 },
    permissions,
  });
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  const close = async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, requests, close };
}

/** The last console lines, page errors, failed requests and navigations of each page. */
const RECENT = new WeakMap();

/**
 * Opens a page and collects problems: CSP violations (the DOM event, in the page), console
 * errors that mention the Content Security Policy, uncaught page errors.
 */
export async function openPage(context, url) {
  const page = await context.newPage();
  const problems = [];
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__cspViolations.push(`${e.violatedDirective}: ${e.blockedURI}`),
    );
  });
  const recent = [];
  RECENT.set(page, recent);
  const note = (line) => {
    recent.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    if (recent.length > 40) recent.shift();
  };
  page.on('console', (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
    note(`console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => {
    problems.push(`pageerror: ${e.message}`);
    note(`pageerror: ${e.message}`);
  });
  page.on('requestfailed', (r) => note(`request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on('framenavigated', (f) => f === page.mainFrame() && note(`navigated: ${f.url()}`));
  page.on('worker', (w) => {
    note(`worker started: ${w.url()}`);
    w.on('console', (m) => {
      if (/Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`worker console: ${m.text()}`);
      note(`worker console.${m.type()}: ${m.text()}`);
    });
  });
  await page.goto(url);
  const cspViolations = () => page.evaluate(() => window.__cspViolations ?? []);
  return { page, problems, cspViolations };
}

/**
 * What a page shows and what it logged lately, for a failed wait's message: its status lines,
 * its data attributes, its service worker's state and the last events openPage recorded.
 */
export async function describePage(page) {
  const shown = await Promise.race([
    page
      .evaluate(async () => {
        const text = (id) => document.getElementById(id)?.textContent?.trim().slice(0, 300);
        const reg = await navigator.serviceWorker?.getRegistration().catch(() => null);
        const sw = (w) => (w ? `${w.scriptURL.split('/').pop()} ${w.state}` : 'none');
        return {
          url: location.href,
          data: { ...document.body.dataset },
          engine: text('engine-status'),
          message: text('message'),
          model: text('model-status'),
          serviceWorker: reg
            ? { controller: !!navigator.serviceWorker.controller, active: sw(reg.active), installing: sw(reg.installing), waiting: sw(reg.waiting) }
            : 'none registered',
        };
      })
      .catch((e) => `(cannot read the page: ${e.message})`),
    new Promise((r) => setTimeout(() => r('(the page did not answer in 5 s)'), 5000)),
  ]);
  return `page: ${JSON.stringify(shown, null, 1)}\nrecent events:\n  ${(RECENT.get(page) ?? []).join('\n  ') || '(none)'}`;
}

/** Waits until the page's detector is up and model sources are listed. */
export async function ready(page) {
  try {
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  } catch (e) {
    throw new Error(`${e.message}\n${await describePage(page)}`);
  }
}

/** Clicks the interface test model button and waits until it is loaded. */
export async function loadTestModel(page, { complete = false } = {}) {
  await page.getByRole('button', { name: TEST_MODEL_BUTTON }).click();
  await waitLoaded(page, '', { complete });
}

/**
 * Waits for the model status line to say `Loaded <label>`. A streamed checkpoint says so once
 * its image tower is in; with `complete` this also waits for the rest of the file to arrive and
 * pass its sha256 check, which is when the downloaded copy is in the Cache API.
 */
export async function waitLoaded(page, label, { complete = false, timeout = 60_000 } = {}) {
  await page.waitForFunction(
    ({ label, complete }) => {
      const t = document.getElementById('model-status').textContent;
      return t.startsWith(`Loaded ${label}`) && !(complete && /still loading/.test(t));
    },
    { label, complete },
    { timeout },
  );
}

export function image(name) {
  return readFileSync(join(IMAGES, name));
}

/**
 * Dispatches a synthetic drop of files on `selector` (a DataTransfer built in the page from
 * the bytes). files: [{name, type, bytes: Buffer}].
 */
export async function dropFiles(page, selector, files) {
  const payload = files.map((f) => ({ name: f.name, type: f.type ?? '', b64: Buffer.from(f.bytes).toString('base64') }));
  await page.evaluate(
    ({ selector, payload }) => {
      const dt = new DataTransfer();
      for (const f of payload) {
        const bin = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bin], f.name, { type: f.type }));
      }
      const target = document.querySelector(selector);
      target.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    },
    { selector, payload },
  );
}

/** Dispatches a synthetic paste of one file. */
export async function pasteFile(page, file) {
  await page.evaluate(
    ({ name, type, b64 }) => {
      const dt = new DataTransfer();
      dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
      document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    },
    { name: file.name, type: file.type ?? '', b64: Buffer.from(file.bytes).toString('base64') },
  );
}

/** The page's `anoscope:drawn` detail with the map (a Float32Array there) as a plain array. */
const drawnDetail = () =>
  new Promise((resolve) =>
    document.addEventListener(
      'anoscope:drawn',
      (e) => resolve({ ...e.detail, map: e.detail.map ? Array.from(e.detail.map) : undefined }),
      { once: true },
    ),
  );

/** Resolves when the page has drawn the next result; returns its {ms, score, name, map}. */
export function nextDrawn(page) {
  return page.evaluate(drawnDetail);
}

/** Drops files and waits for the drawn result. */
export async function dropAndWait(page, files, selector = '#drop') {
  const drawn = page.evaluate(drawnDetail);
  await dropFiles(page, selector, files);
  return drawn;
}

/** Statistics of the overlay canvas: distinct colours and the luminance standard deviation. */
export function canvasStats(page, selector = '#overlay') {
  return page.evaluate((selector) => {
    const c = document.querySelector(selector);
    const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    const colours = new Set();
    let sum = 0;
    let sq = 0;
    const n = c.width * c.height;
    for (let i = 0; i < data.length; i += 4) {
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += y;
      sq += y * y;
    }
    const mean = sum / n;
    return { width: c.width, height: c.height, colours: colours.size, std: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
  }, selector);
}

/** The page's alert text ('' when hidden). */
export function message(page) {
  return page.evaluate(() => {
    const m = document.getElementById('message');
    return m.hidden ? '' : m.textContent;
  });
}

/** A PNG whose IHDR claims width × height (no pixel data worth decoding). */
export function pngHeaderOnly(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', Buffer.from([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
