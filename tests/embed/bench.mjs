// Drop → heatmap on the docs page (the VitePress site of vitepress.test.mjs, the element from the
// npm package, no COOP/COEP: one thread) vs the main page (anoscope serve, cross-origin isolated),
// same machine, same checkpoint, same photo. Not a test: prints the times.
//
//   node tests/embed/bench.mjs MODEL_DIR PHOTO.png [RUNS]
//
// MODEL_DIR: a checkpoint folder (e.g. `anoscope random-weights --arch vit-b-16 --dtype f16 --out
// DIR`). Needs www/dist (./build.sh build) and tests/embed's npm packages. The first drop of each
// page (which also encodes the prompts when the folder has no prompts.safetensors) is left out.
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { indexSite } from '../browser/site-index.mjs';
import { makeSite, openPage, serve, waitLoaded, ready } from '../browser/harness.mjs';
import { bin, browser, dropOnElement, installTarball, packPackage, staticServer } from './helpers.mjs';

const [modelDir, photoPath, runsArg] = process.argv.slice(2);
if (!modelDir || !photoPath) throw new Error('usage: node tests/embed/bench.mjs MODEL_DIR PHOTO.png [RUNS]');
const runs = Number(runsArg || 5);
const photo = { name: basename(photoPath), type: 'image/png', bytes: readFileSync(photoPath) };
const name = basename(resolve(modelDir));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timeDrops(drop) {
  const ms = [];
  for (let i = 0; i <= runs; i += 1) ms.push(await drop());
  return { first: ms[0], rest: ms.slice(1) };
}

// The main page, the checkpoint served with the site and loaded by ?model=.
const dir = makeSite();
cpSync(modelDir, join(dir, 'models', name), { recursive: true });
await indexSite(dir);
const main = await serve(dir);
let mainMs;
{
  const b = await browser();
  const { page } = await openPage(b.context, `${main.url}?model=${encodeURIComponent(name)}`);
  await ready(page);
  await waitLoaded(page, name, { complete: true, timeout: 300_000 });
  mainMs = await timeDrops(() =>
    page.evaluate(
      ({ b64, name, type }) =>
        new Promise((resolve) => {
          const dt = new DataTransfer();
          dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
          const t0 = performance.now();
          document.addEventListener('anoscope:drawn', () => resolve(performance.now() - t0), { once: true });
          const target = document.querySelector('#drop');
          target.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
          target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        }),
      { b64: photo.bytes.toString('base64'), name: photo.name, type: photo.type },
    ),
  );
  await b.close();
  main.stop();
}

// The docs page.
const pkg = await packPackage();
installTarball(pkg.tarball);
const models = await staticServer({ '/m/': resolve(modelDir) }, { cors: true });
const out = mkdtempSync(join(tmpdir(), 'anoscope-vitepress-bench-'));
bin('vitepress', ['build', 'vitepress', '--outDir', out], { VITE_ANOSCOPE_MODEL: `${models.url}m/` });
const site = await staticServer({ '/': out });
let docsMs;
{
  const b = await browser();
  const { page } = await openPage(b.context, site.url);
  await page.waitForFunction(() => customElements.get('anomaly-detector'));
  await page.evaluate(() => document.querySelector('#detector').load());
  docsMs = await timeDrops(async () => (await dropOnElement(page, '#detector', photo)).ms);
  await b.close();
}
await site.stop();
await models.stop();
pkg.cleanup();
rmSync(out, { recursive: true, force: true });

const fmt = (r) => `median ${median(r.rest).toFixed(0)} ms (${r.rest.map((x) => x.toFixed(0)).join(', ')}; first drop ${r.first.toFixed(0)} ms)`;
console.log(`checkpoint ${name}, photo ${photo.name}, ${runs} drops each after the first`);
console.log(`main page (cross-origin isolated): ${fmt(mainMs)}`);
console.log(`docs page (VitePress, npm package, no COOP/COEP): ${fmt(docsMs)}`);
console.log(`ratio docs/main: ${(median(docsMs.rest) / median(mainMs.rest)).toFixed(2)}`);
