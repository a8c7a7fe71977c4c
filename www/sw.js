// Service worker: keeps the app shell, the wasm package, the prompt files and the model index
// so that after one visit the page works with the network off. Checkpoint files are cached by
// the detector worker itself (Cache API, sha256-checked), so they pass through here untouched.
const SHELL_CACHE = 'anoscope-shell-v2';
const SHELL = [
  './',
  'index.html',
  'main.js',
  'common.js',
  'worker.js',
  'pool-guard.js',
  'style.css',
  'anomaly-detector.js',
  'anomaly-detector.css',
  'build.json',
  'models.json',
  'weights/manifest.json',
  'pkg/anoscope.js',
  'pkg/anoscope_bg.wasm',
  'examples/embed.html',
  'examples/embed.js',
];

const SHELL_URLS = new Set(SHELL.map((p) => new URL(p, self.location.href).href));

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(SHELL_CACHE);
      // One missing optional file (e.g. no manifest) must not stop the rest from being cached.
      await Promise.all(SHELL.map((path) => cache.add(new Request(path, { cache: 'no-cache' })).catch(() => {})));
      // The threaded build's files (pkg-threads/, listed in build.json) when the site has it.
      const build = await cache.match('build.json').then((r) => r?.json()).catch(() => null);
      const extra = build?.wasmThreads?.files ?? [];
      await Promise.all(extra.map((path) => cache.add(new Request(path, { cache: 'no-cache' })).catch(() => {})));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const key of await caches.keys()) {
        if (key.startsWith('anoscope-shell-') && key !== SHELL_CACHE) await caches.delete(key);
      }
      await self.clients.claim();
    })(),
  );
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) return;
  const inThreadsPkg = url.pathname.startsWith(new URL('pkg-threads/', self.location.href).pathname);
  if (!SHELL_URLS.has(url.origin + url.pathname) && !inThreadsPkg) return;
  // Network first (so a rebuilt site is picked up), the cached copy when offline.
  event.respondWith(
    (async () => {
      const cache = await caches.open(SHELL_CACHE);
      try {
        const res = await fetch(req);
        if (res.ok) await cache.put(req, res.clone());
        return res;
      } catch (e) {
        const hit = await cache.match(req, { ignoreSearch: true });
        if (hit) return hit;
        throw e;
      }
    })(),
  );
});
