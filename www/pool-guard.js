// A rayon pool thread of the threaded build (wasm-bindgen-rayon's worker script, imported here)
// that reports its own death. A trap in a pool thread (an allocation failing there when memory
// runs out) ends that Web Worker while the detector worker waits for its job forever, unable to
// hear anything; so the report goes straight to the page over a BroadcastChannel the page knows
// (worker.js starts the pool through this file; main.js restarts the detector on the report).
// The first message says what to run and the channel's name (not the URL's query: a copy served
// by the service worker comes without it); later ones, wasm-bindgen-rayon's own init message
// included, are held until that script is imported and then handed to its listener.
const held = [];
let setup = null; // resolves with the first message
const hold = (e) => {
  e.stopImmediatePropagation();
  if (setup && e.data?.type === 'anoscope-pool-guard') {
    setup(e.data);
    setup = null;
  } else {
    held.push(e.data);
  }
};
self.addEventListener('message', hold);
const { src, channel } = await new Promise((resolve) => (setup = resolve));

const reports = new BroadcastChannel(channel);
function report(reason) {
  const error = `${reason?.message ?? reason}`;
  const oom = reason instanceof WebAssembly.RuntimeError || /memory|allocation/i.test(error);
  reports.postMessage({ type: 'fatal', request: 'pool', oom, error: `a worker thread stopped: ${error}` });
}
self.addEventListener('error', (e) => report(e.error ?? e.message));
self.addEventListener('unhandledrejection', (e) => report(e.reason));

const url = new URL(src, self.location.href);
if (url.origin !== self.location.origin) throw new Error('pool-guard: the pool script must be same-origin');
await import(url.href);
self.removeEventListener('message', hold);
for (const data of held) self.dispatchEvent(new MessageEvent('message', { data }));
