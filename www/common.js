// Helpers shared by the page, the worker and the embeddable element.

/** Cache API bucket for checkpoint files (served, downloaded from the manifest, verified). */
export const WEIGHTS_CACHE = 'anoscope-weights-v1';

/** Lower-case hex sha256 of bytes (Web Crypto). */
export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A Response body as chunks (Uint8Arrays) as they arrive. A body longer than `maxBytes`, or
 * shorter than its Content-Length `total` (a truncated download), is an error.
 */
export async function* responseChunks(res, maxBytes = Infinity, total = Number(res.headers.get('content-length')) || 0) {
  if (!res.body) {
    yield new Uint8Array(await res.arrayBuffer());
    return;
  }
  const reader = res.body.getReader();
  let done = 0;
  let finished = false;
  try {
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch (e) {
        throw new Error(`the download broke off after ${done} of ${total || '?'} bytes (${e?.message ?? e})`);
      }
      if (step.done) break;
      done += step.value.byteLength;
      if (done > maxBytes) throw new Error(`the download exceeds ${maxBytes} bytes, the most the page accepts`);
      yield step.value;
    }
    finished = true;
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
  if (total && done !== total) throw new Error(`the download is truncated: got ${done} of ${total} bytes`);
}

/** Reads a Response body to a Uint8Array (see responseChunks), reporting (bytesDone, bytesTotal). */
export async function fetchWithProgress(res, onProgress, maxBytes = Infinity) {
  const total = Number(res.headers.get('content-length')) || 0;
  const chunks = [];
  let done = 0;
  let last = 0;
  for await (const chunk of responseChunks(res, maxBytes, total)) {
    chunks.push(chunk);
    done += chunk.byteLength;
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      onProgress(done, total);
    }
  }
  onProgress(done, total || done);
  const out = new Uint8Array(done);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** "12.3 MB" style sizes. */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

/** Promise-based request/response wrapper around the detector worker (its URL, or a started Worker). */
export class DetectorClient {
  constructor(url, { onProgress, onReady, onFatal, onBackend, onModel, onStorage } = {}) {
    this.worker = url instanceof Worker ? url : new Worker(url, { type: 'module' });
    this.pending = new Map();
    this.nextId = 1;
    this.ready = new Promise((resolve, reject) => {
      this.worker.onmessage = ({ data }) => {
        if (data.type === 'ready') {
          onReady?.(data);
          resolve(data);
        } else if (data.type === 'fatal') {
          onFatal?.(data.error, data);
          reject(new Error(data.error));
        } else if (data.type === 'progress') {
          onProgress?.(data);
        } else if (data.type === 'backend') {
          onBackend?.(data);
        } else if (data.type === 'model') {
          // The rest of a streamed checkpoint arrived and checked out (ok) or failed (error).
          onModel?.(data);
        } else if (data.type === 'storage') {
          // Whether a downloaded file was kept for offline use (or why not).
          onStorage?.(data);
        } else if (this.pending.has(data.id)) {
          const { resolve: ok, reject: fail } = this.pending.get(data.id);
          this.pending.delete(data.id);
          if (data.ok) ok(data.result);
          else fail(new Error(data.error));
        }
      };
      this.worker.onerror = (ev) => {
        const msg = `the detector worker failed: ${ev.message || 'script error'}`;
        onFatal?.(msg);
        reject(new Error(msg));
      };
    });
  }

  call(type, payload, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type, payload }, transfer);
    });
  }

  terminate() {
    this.worker.terminate();
    for (const { reject } of this.pending.values()) reject(new Error('the detector was stopped'));
    this.pending.clear();
  }
}

/** Plain-language verdict for a score at a threshold. */
export function verdict(score, threshold) {
  return score >= threshold ? 'anomalous' : 'normal';
}

/** The models the site serves (models.json written by build.sh), or an empty list. */
export async function servedModels(base) {
  try {
    const res = await fetch(new URL('models.json', base));
    if (!res.ok) return [];
    return (await res.json()).models ?? [];
  } catch {
    return [];
  }
}
