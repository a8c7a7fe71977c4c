// A rayon pool thread of the threaded build (wasm-bindgen-rayon's worker script, imported here)
// that reports its own death. A trap in a pool thread (an allocation failing there when memory
// runs out) ends that Web Worker while the detector worker waits for its job forever, unable to
// hear anything; so the report goes straight to the page over a BroadcastChannel the page named
// (worker.js starts the pool through this file; main.js restarts the detector on the report).
const params = new URL(self.location.href).searchParams;
const src = new URL(params.get('src') ?? '', self.location.href);
const channel = new BroadcastChannel(params.get('channel') ?? 'anoscope-pool');

function report(reason) {
  const error = `${reason?.message ?? reason}`;
  const oom = reason instanceof WebAssembly.RuntimeError || /memory|allocation/i.test(error);
  channel.postMessage({ type: 'fatal', request: 'pool', oom, error: `a worker thread stopped: ${error}` });
}
self.addEventListener('error', (e) => report(e.error ?? e.message));
self.addEventListener('unhandledrejection', (e) => report(e.reason));

// The pool's init message may arrive while the script below is still being imported: held
// here, then handed to its listener.
const early = [];
const hold = (e) => {
  early.push(e.data);
  e.stopImmediatePropagation();
};
self.addEventListener('message', hold);
if (src.origin !== self.location.origin) throw new Error('pool-guard: the pool script must be same-origin');
await import(src.href);
self.removeEventListener('message', hold);
for (const data of early) self.dispatchEvent(new MessageEvent('message', { data }));
