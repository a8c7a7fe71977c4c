// Writes www/dist/models.json (the checkpoints the site serves) and www/dist/build.json (sha256
// of the wasm the worker checks before instantiating it). Usage: node site-index.mjs DIST_DIR
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';

const dist = process.argv[2];
if (!dist) throw new Error('usage: node site-index.mjs DIST_DIR');

function sha256(path) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

async function fileEntry(path) {
  return { url: relative(dist, path).split('\\').join('/'), size: statSync(path).size, sha256: await sha256(path) };
}

/** A checkpoint folder: {configName, config, weights, prompts?} or null when incomplete. */
async function checkpoint(dir) {
  for (const [configName, weightsName] of [
    ['config.json', 'model.safetensors'],
    ['open_clip_config.json', 'open_clip_model.safetensors'],
  ]) {
    if (existsSync(join(dir, configName)) && existsSync(join(dir, weightsName))) {
      const prompts = join(dir, 'prompts.safetensors');
      return {
        configName,
        config: await fileEntry(join(dir, configName)),
        weights: await fileEntry(join(dir, weightsName)),
        prompts: existsSync(prompts) ? await fileEntry(prompts) : undefined,
      };
    }
  }
  return null;
}

const models = [];
const served = join(dist, 'weights', 'checkpoints');
if (existsSync(served)) {
  // f16 conversions first: half the download for the same results.
  const names = readdirSync(served).sort((a, b) => Number(b.endsWith('-f16')) - Number(a.endsWith('-f16')) || a.localeCompare(b));
  for (const name of names) {
    const c = await checkpoint(join(served, name));
    if (c) models.push({ name, label: name, test: false, ...c });
  }
}
const extra = join(dist, 'models');
if (existsSync(extra)) {
  for (const name of readdirSync(extra).sort()) {
    const c = await checkpoint(join(extra, name));
    if (!c) continue;
    const test = name.startsWith('test-');
    models.push({
      name,
      label: test ? 'interface test model (random weights, meaningless scores)' : name,
      test,
      ...c,
    });
  }
}
writeFileSync(join(dist, 'models.json'), `${JSON.stringify({ schema: 1, models }, null, 2)}\n`);

const wasmPath = join(dist, 'pkg', 'anoscope_bg.wasm');
const wasm = readFileSync(wasmPath);
const build = {
  schema: 1,
  wasm: {
    url: 'pkg/anoscope_bg.wasm',
    size: wasm.length,
    gzipSize: gzipSync(wasm, { level: 9 }).length,
    sha256: createHash('sha256').update(wasm).digest('hex'),
  },
};
// The threaded build (when built): its wasm and every file the service worker must keep offline.
const threadsDir = join(dist, 'pkg-threads');
if (existsSync(join(threadsDir, 'anoscope_bg.wasm'))) {
  const tw = readFileSync(join(threadsDir, 'anoscope_bg.wasm'));
  const files = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (/\.(js|wasm)$/.test(e.name)) files.push(relative(dist, join(d, e.name)).split('\\').join('/'));
    }
  };
  walk(threadsDir);
  build.wasmThreads = {
    url: 'pkg-threads/anoscope_bg.wasm',
    size: tw.length,
    gzipSize: gzipSync(tw, { level: 9 }).length,
    sha256: createHash('sha256').update(tw).digest('hex'),
    files: files.sort(),
  };
}
writeFileSync(join(dist, 'build.json'), `${JSON.stringify(build, null, 2)}\n`);
console.log(`models.json: ${models.map((m) => m.name).join(', ') || 'no checkpoint'}; build.json: wasm sha256 ${build.wasm.sha256}`);
