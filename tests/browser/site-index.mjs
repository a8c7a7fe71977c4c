// Indexes an assembled site: writes DIST/models.json (the checkpoints the site serves, a q8
// conversion listed as a variant of its f16 reference's entry), stamps the
// build id into DIST/index.html, main.js, worker.js and sw.js, and writes DIST/build.json (the id,
// the sha256 of the wasm the worker checks before instantiating it, and of every file of the
// page). Usage: node site-index.mjs DIST_DIR; tests import indexSite() to make a second version.
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { dtypeOfHeader } from '../../www/common.js';

function sha256(path) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

const sha256Bytes = (bytes) => createHash('sha256').update(bytes).digest('hex');
const urlOf = (dist, path) => relative(dist, path).split('\\').join('/');

async function fileEntry(dist, path) {
  return { url: urlOf(dist, path), size: statSync(path).size, sha256: await sha256(path) };
}

/**
 * A checkpoint folder's learned file (`learned.safetensors`, written by `anoscope convert
 * --learned FILE --model DIR`): {url, size, sha256, mode, imageSize}, or undefined. The mode is
 * adaptclip when the file holds AdaptCLIP's class pairs, else anomalyclip; `learned.json`
 * ({"imageSize": N}) may set the side images are resized to (default 518, the official size).
 */
async function learnedEntry(dist, dir) {
  const path = join(dir, 'learned.safetensors');
  if (!existsSync(path)) return undefined;
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const names = Object.keys(JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')));
  const mode = names.some((k) => k.startsWith('adaptclip.')) ? 'adaptclip' : 'anomalyclip';
  const side = join(dir, 'learned.json');
  const imageSize = existsSync(side) ? JSON.parse(readFileSync(side, 'utf8')).imageSize : 518;
  if (!Number.isInteger(imageSize) || imageSize < 1 || imageSize > 4096) {
    throw new Error(`${side}: imageSize must be an integer in 1..4096, got ${imageSize}`);
  }
  return { ...(await fileEntry(dist, path)), mode, imageSize };
}

/** How a safetensors file stores its weights ('q8', 'f16', 'f32', …: dtypeOfHeader), read from
 * its header alone; null when the header cannot be read. */
function weightsDtype(path) {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) !== 8) return null;
    const n = Number(head.readBigUInt64LE(0));
    if (n <= 0 || n > 100_000_000) return null;
    const json = Buffer.alloc(n);
    if (readSync(fd, json, 0, n, 8) !== n) return null;
    return dtypeOfHeader(JSON.parse(json.toString('utf8')));
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** A checkpoint folder: {configName, config, weights, dtype, prompts?, learned?} or null when incomplete. */
async function checkpoint(dist, dir) {
  for (const [configName, weightsName] of [
    ['config.json', 'model.safetensors'],
    ['open_clip_config.json', 'open_clip_model.safetensors'],
  ]) {
    if (existsSync(join(dir, configName)) && existsSync(join(dir, weightsName))) {
      const prompts = join(dir, 'prompts.safetensors');
      return {
        configName,
        config: await fileEntry(dist, join(dir, configName)),
        weights: await fileEntry(dist, join(dir, weightsName)),
        dtype: weightsDtype(join(dir, weightsName)),
        prompts: existsSync(prompts) ? await fileEntry(dist, prompts) : undefined,
        learned: await learnedEntry(dist, dir),
      };
    }
  }
  return null;
}

async function writeModels(dist) {
  const models = [];
  const served = join(dist, 'weights', 'checkpoints');
  if (existsSync(served)) {
    // f16 conversions first: half the download for the same results.
    const names = readdirSync(served).sort((a, b) => Number(b.endsWith('-f16')) - Number(a.endsWith('-f16')) || a.localeCompare(b));
    for (const name of names) {
      const c = await checkpoint(dist, join(served, name));
      if (c) models.push({ name, label: name, test: false, ...c });
    }
  }
  const extra = join(dist, 'models');
  if (existsSync(extra)) {
    for (const name of readdirSync(extra).sort()) {
      const c = await checkpoint(dist, join(extra, name));
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
  const grouped = groupVariants(models);
  writeFileSync(join(dist, 'models.json'), `${JSON.stringify({ schema: 1, models: grouped }, null, 2)}\n`);
  return grouped;
}

/**
 * A folder NAME-q8 (`anoscope convert --dtype q8`, written by ./build.sh weights next to NAME-f16)
 * becomes a variant of its reference's entry: NAME-f16, else NAME. That entry keeps its own
 * fields (what a reader that knows no variants loads) and lists `variants`, the reference first:
 * [{dtype, name, configName, config, weights, prompts?, learned?}, …]. A q8 folder without a
 * reference stays an entry of its own.
 */
function groupVariants(models) {
  const byName = new Map(models.map((m) => [m.name, m]));
  const variant = ({ dtype, name, configName, config, weights, prompts, learned }) => ({
    dtype, name, configName, config, weights, prompts, learned,
  });
  const folded = new Set();
  for (const m of models) {
    if (!m.name.endsWith('-q8') || m.dtype !== 'q8') continue;
    const base = m.name.slice(0, -3);
    const ref = [`${base}-f16`, base].map((n) => byName.get(n)).find((r) => r && r.dtype !== 'q8' && r.test === m.test);
    if (!ref) continue;
    ref.variants ??= [variant(ref)];
    ref.variants.push(variant(m));
    folded.add(m.name);
  }
  return models.filter((m) => !folded.has(m.name));
}

// ---------------------------------------------------------------------------------------------
// The build id. Every file the page is made of (all of the site but the checkpoints and
// build.json) goes into it, so any change to the site makes a new id, and with it new bytes of
// sw.js: the browser installs the new service worker. The id is stamped where the page, the
// worker and the service worker can compare it (docs/page.md, "Upgrades and deployment").

/** Files that carry the id, and the pattern of the stamp (group 1 = the id). */
export const STAMPS = {
  'index.html': /(<meta name="anoscope-build" content=")([^"]*)(">)/,
  'main.js': /^(const BUILD_ID = ')([^']*)(';)/m,
  'worker.js': /^(const BUILD_ID = ')([^']*)(';)/m,
  'sw.js': /^(const BUILD_ID = ')([^']*)(';)/m,
};
const UNSTAMPED = 'dev';

/** Directories of checkpoints: fetched and cached by the worker, not part of the page. */
const CHECKPOINT_DIRS = ['weights/checkpoints/', 'models/'];

/** The page's files, relative to dist, sorted: all but checkpoints and build.json. */
function pageFiles(dist) {
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = urlOf(dist, p);
      if (CHECKPOINT_DIRS.some((c) => `${rel}/`.startsWith(c))) continue;
      if (statSync(p).isDirectory()) walk(p);
      else if (rel !== 'build.json') out.push(rel);
    }
  };
  walk(dist);
  return out.sort();
}

/** Writes `id` into every stamped file (a missing stamp is an error: the check would be lost). */
export function stampSite(dist, id) {
  for (const [file, pattern] of Object.entries(STAMPS)) {
    const path = join(dist, file);
    const text = readFileSync(path, 'utf8');
    if (!pattern.test(text)) throw new Error(`${path}: the build-id stamp (${pattern}) is missing`);
    writeFileSync(path, text.replace(pattern, `$1${id}$3`));
  }
}

/** The id of the site as it is: sha256 over each page file (stamps reset), 16 hex digits. */
export function buildId(dist) {
  const h = createHash('sha256');
  for (const rel of pageFiles(dist)) {
    let bytes = readFileSync(join(dist, rel));
    if (STAMPS[rel]) bytes = Buffer.from(bytes.toString('utf8').replace(STAMPS[rel], `$1${UNSTAMPED}$3`));
    h.update(`${rel}\0${sha256Bytes(bytes)}\n`);
  }
  return h.digest('hex').slice(0, 16);
}

function wasmEntry(dist, dir) {
  const wasm = readFileSync(join(dist, dir, 'anoscope_bg.wasm'));
  return {
    url: `${dir}/anoscope_bg.wasm`,
    size: wasm.length,
    gzipSize: gzipSync(wasm, { level: 9 }).length,
    sha256: sha256Bytes(wasm),
    // The wasm-bindgen glue that must come from the same build.
    js: { url: `${dir}/anoscope.js`, sha256: sha256Bytes(readFileSync(join(dist, dir, 'anoscope.js'))) },
  };
}

/**
 * Indexes `dist`: models.json, the build id stamped into the page's files, build.json. Safe to
 * run again on an indexed site (after changing files): the stamps are replaced.
 */
export async function indexSite(dist) {
  const models = await writeModels(dist);
  const id = buildId(dist);
  stampSite(dist, id);
  const build = { schema: 2, id, wasm: wasmEntry(dist, 'pkg') };
  // The threaded build and the relaxed-SIMD variants (when built): each one's wasm and every file
  // the service worker must keep offline.
  const optional = { wasmThreads: 'pkg-threads', wasmRelaxed: 'pkg-relaxed', wasmThreadsRelaxed: 'pkg-threads-relaxed' };
  for (const [key, dir] of Object.entries(optional)) {
    if (!existsSync(join(dist, dir, 'anoscope_bg.wasm'))) continue;
    const files = [];
    const walk = (d) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else if (/\.(js|wasm)$/.test(e.name)) files.push(urlOf(dist, join(d, e.name)));
      }
    };
    walk(join(dist, dir));
    build[key] = { ...wasmEntry(dist, dir), files: files.sort() };
  }
  // sha256 of every page file as served (stamped): the service worker caches a version only when
  // every file it keeps matches (a half-deployed server is not cached).
  build.files = {};
  for (const rel of pageFiles(dist)) build.files[rel] = await sha256(join(dist, rel));
  writeFileSync(join(dist, 'build.json'), `${JSON.stringify(build, null, 2)}\n`);
  return { id, build, models };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const dist = process.argv[2];
  if (!dist) throw new Error('usage: node site-index.mjs DIST_DIR');
  const { id, build, models } = await indexSite(dist);
  console.log(
    `models.json: ${models.map((m) => m.name).join(', ') || 'no checkpoint'}; build.json: build ${id}, wasm sha256 ${build.wasm.sha256}`,
  );
}
