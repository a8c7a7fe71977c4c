// A plain Vite app that uses the package's JS API (no element): it draws a photo onto a canvas,
// scores the canvas, and scores the same photo's file, for vite.test.mjs to compare.
import { createDetector } from 'anoscope';

const status = document.getElementById('status');
const canvas = document.getElementById('photo');

async function main() {
  const detector = await createDetector({
    model: import.meta.env.VITE_ANOSCOPE_MODEL,
    onProgress: ({ label }) => (status.textContent = `Loading: ${label ?? '…'}`),
  });
  const blob = await (await fetch('sample.png')).blob();
  // The photo's own pixels on the canvas (no colour conversion), as a page that draws them would.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d', { willReadFrequently: true }).drawImage(bitmap, 0, 0);
  const fromCanvas = await detector.detect(canvas, { category: 'bottle' });
  const fromFile = await detector.detect(blob, { category: 'bottle' });
  const plain = (r) => ({ score: r.score, verdict: r.verdict, width: r.width, height: r.height, map: Array.from(r.map) });
  window.__result = { canvas: plain(fromCanvas), file: plain(fromFile), info: detector.info };
  status.textContent = `Anomaly score ${fromCanvas.score.toFixed(3)} (${fromCanvas.verdict}).`;
  document.body.dataset.done = 'ok';
}

main().catch((e) => {
  status.textContent = `Error: ${e.message}`;
  window.__error = e.message;
  document.body.dataset.done = 'error';
});
