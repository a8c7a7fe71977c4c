// Service worker: keeps the app shell, the wasm package, the prompt files and the model index
// so that after one visit the page works with the network off. Checkpoint files are cached by
// the detector worker itself (Cache API, sha256-checked), so they pass through here untouched.
//
// One version at a time (docs/page.md, "Upgrades and deployment"): BUILD_ID is stamped by
// tests/browser/site-index.mjs, so every deploy changes this file and the browser installs the
// new worker. It caches its version only when build.json carries the same id and every file it
// keeps has the sha256 build.json lists: a half-deployed server fails the install, and the old
// version stays in charge (and keeps working offline). Once its own version is stored whole it
// deletes every other version's shell cache (at the end of install: Chromium activates a new
// worker only once the old one has no work left in the browser, which can take its 5-minute
// limit, and the old cache must not linger that long); the old worker, still in charge until
// then, serves the new version's files when offline. The checkpoint cache (anoscope-weights-*)
// is never touched here.
const BUILD_ID = 'dev';
const SHELL_CACHE = `anoscope-shell-${BUILD_ID}`;
const SHELL = [
  './',
  'index.html',
  'main.js',
  'common.js',
  'deploy.js',
  'worker.js',
  'pool-guard.js',
  'style.css',
  'photo-view.js',
  'photo-view.css',
  'anomaly-detector.js',
  'anomaly-detector.css',
  'build.json',
  'models.json',
  'weights/manifest.json',
  'pkg/anoscope.js',
  'pkg/anoscope_bg.wasm',
  'examples/embed.html',
  'examples/embed.js',
  'api.js',
];

const SHELL_URLS = new Set(SHELL.map((p) => new URL(p, self.location.href).href));

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Fetches `path` past the HTTP cache and checks it against build.json; a Response to keep. */
async function verified(path, want) {
  const res = await fetch(new Request(path, { cache: 'no-cache' }));
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  const bytes = await res.arrayBuffer();
  const got = await sha256Hex(bytes);
  if (got !== want) throw new Error(`${path} has sha256 ${got}, but build.json of version ${BUILD_ID} lists ${want}`);
  return new Response(bytes, { status: res.status, statusText: res.statusText, headers: res.headers });
}

/** This version's files, every one checked, or an error naming the first that does not match. */
async function consistentShell() {
  const res = await fetch(new Request('build.json', { cache: 'no-cache' }));
  if (!res.ok) throw new Error(`build.json: HTTP ${res.status}`);
  const text = await res.text();
  const build = JSON.parse(text);
  if (build.id !== BUILD_ID) {
    throw new Error(`sw.js is version ${BUILD_ID} but the server's build.json says ${build.id}: the site is being redeployed`);
  }
  const files = build.files ?? {};
  // The threaded build's and the relaxed-SIMD variants' files (pkg-threads/, pkg-relaxed/,
  // pkg-threads-relaxed/, listed in build.json) when the site has them.
  const extra = [build.wasmThreads, build.wasmRelaxed, build.wasmThreadsRelaxed].flatMap((e) => e?.files ?? []);
  const paths = [...SHELL, ...extra].filter((p) => p !== 'build.json');
  const entries = await Promise.all(
    paths.map(async (path) => {
      const want = files[path === './' ? 'index.html' : path];
      // A file this build does not have (e.g. no weights/manifest.json) is not kept.
      return want ? [path, await verified(path, want)] : null;
    }),
  );
  entries.push(['build.json', new Response(text, { status: 200, headers: res.headers })]);
  return entries.filter(Boolean);
}

/** Every other version's shell cache (never the checkpoint cache). */
async function otherShells() {
  return (await caches.keys()).filter((key) => key.startsWith('anoscope-shell-') && key !== SHELL_CACHE);
}

async function deleteOtherShells() {
  for (const key of await otherShells()) await caches.delete(key);
}

/**
 * The stored copy of `req` for offline use: this version's, or where a newer version's install
 * has replaced it while this worker is still in charge, that version's (the only other shell
 * cache left: installs delete the rest). Each cache holds one whole version; the page and the
 * detector worker refuse a mix.
 */
async function cachedShell(req) {
  // caches.match with cacheName, not caches.open: opening a deleted cache would create it again.
  for (const cacheName of [SHELL_CACHE, ...(await otherShells())]) {
    const hit = await caches.match(req, { ignoreSearch: true, cacheName });
    if (hit) return hit;
  }
  return undefined;
}

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      // Everything is fetched and checked before anything is stored: all of a version or none.
      const entries = await consistentShell();
      try {
        const cache = await caches.open(SHELL_CACHE);
        for (const [path, res] of entries) await cache.put(path, res);
      } catch (e) {
        // Out of quota (a private window) or storage cleared: no half-stored version is left.
        await caches.delete(SHELL_CACHE).catch(() => {});
        throw e;
      }
      // This version is stored whole: the others go now, not when the browser activates this
      // worker (see the top of this file).
      await deleteOtherShells();
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      await deleteOtherShells();
      await self.clients.claim();
    })(),
  );
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) return;
  const inThreadsPkg = ['pkg-threads/', 'pkg-relaxed/', 'pkg-threads-relaxed/'].some((d) =>
    url.pathname.startsWith(new URL(d, self.location.href).pathname),
  );
  if (!SHELL_URLS.has(url.origin + url.pathname) && !inThreadsPkg) return;
  // Network first (so a redeployed site is picked up at once; the page and the detector worker
  // check that what they got is one version), the installed version when offline. Responses are
  // not stored here: the cache holds exactly one checked version, written by install.
  event.respondWith(
    (async () => {
      try {
        return await fetch(req);
      } catch (e) {
        const hit = await cachedShell(req);
        if (hit) return hit;
        throw e;
      }
    })(),
  );
});
