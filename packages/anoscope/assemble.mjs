// Assembles the npm package `anoscope` from a built site (www/dist, ./build.sh build) and packs it
// with `npm pack`. Usage: node packages/anoscope/assemble.mjs [DIST] [OUT_DIR]; prints the
// tarball's path. ./build.sh package runs it; tests/embed imports pack().
//
// What goes in: the www/*.js modules the entry points import (followed from the source, so a new
// module such as photo-view.js comes along by itself) and the stylesheets they reference; the
// worker as one self-contained module (esbuild bundles worker.js with its imports, so a bundler
// that emits it as a plain asset keeps it working) carrying build.json (its version and the
// sha256 of each wasm build); both wasm builds (pkg/, pkg-threads/: glue code and .wasm, not
// wasm-bindgen's .d.ts); the weights manifest, written into api.js; the TypeScript declarations,
// README.md, LICENSE, and package.json with the crate's version.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '..', '..');
const WWW = join(ROOT, 'www');

/** The entry modules: the JS API, the element and the pool threads' script (worker.js is bundled). */
const ENTRIES = ['api.js', 'anomaly-detector.js', 'pool-guard.js'];
const WORKER = 'worker.js';

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** The crate's version (crate/Cargo.toml, [package] version). */
export function crateVersion() {
  const toml = readFileSync(join(ROOT, 'crate', 'Cargo.toml'), 'utf8');
  const pkg = toml.split(/^\[/m).find((s) => s.startsWith('package]'));
  const m = pkg?.match(/^version\s*=\s*"([^"]+)"/m);
  if (!m) throw new Error('crate/Cargo.toml: no [package] version');
  return m[1];
}

/**
 * The www/ files the entries need: relative static and dynamic imports, and `new URL('x.js|css', …)`
 * literals (the stylesheet, pool-guard.js), followed transitively.
 */
export function moduleFiles() {
  const seen = new Set();
  const todo = [...ENTRIES];
  while (todo.length) {
    const f = todo.pop();
    if (seen.has(f)) continue;
    const path = join(WWW, f);
    if (!existsSync(path)) throw new Error(`www/${f} is imported but missing`);
    seen.add(f);
    if (!f.endsWith('.js') || f === WORKER) continue;
    const src = readFileSync(path, 'utf8');
    const refs = [
      ...src.matchAll(/\bfrom\s*'\.\/([\w.-]+)'/g),
      ...src.matchAll(/\bimport\s*\(?\s*'\.\/([\w.-]+)'/g),
      ...src.matchAll(/\bnew URL\(\s*'(?:\.\/)?([\w-]+\.(?:js|css))'/g),
    ].map((m) => m[1]);
    for (const r of refs) if (!seen.has(r)) todo.push(r);
  }
  return [...seen].sort();
}

/** The wasm build in DIST/dir as build.json lists it (url, size, sha256, glue code). */
function wasmEntry(dir, name) {
  const wasm = readFileSync(join(dir, name, 'anoscope_bg.wasm'));
  return {
    url: `${name}/anoscope_bg.wasm`,
    size: wasm.length,
    sha256: sha256(wasm),
    js: { url: `${name}/anoscope.js`, sha256: sha256(readFileSync(join(dir, name, 'anoscope.js'))) },
  };
}

/** Copies a wasm build's runtime files (.js, .wasm; no .d.ts or package.json). */
function copyBuild(from, to) {
  for (const e of readdirSync(from, { withFileTypes: true })) {
    const a = join(from, e.name);
    const b = join(to, e.name);
    if (e.isDirectory()) copyBuild(a, b);
    else if (/\.(js|wasm)$/.test(e.name)) {
      mkdirSync(to, { recursive: true });
      cpSync(a, b);
    }
  }
}

function walk(dir, out = []) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

/** Replaces the one line `const NAME = <was>;` of a module's source with `const NAME = <json>;`. */
function embed(src, name, value, was = 'null') {
  const line = `const ${name} = ${was};`;
  const at = src.split('\n').indexOf(line);
  if (at < 0) throw new Error(`the line "${line}" is missing in a www/ module`);
  const lines = src.split('\n');
  lines[at] = `const ${name} = ${JSON.stringify(value)};`;
  return lines.join('\n');
}

/** Writes the package's files into `stage` (emptied first); returns {version, id, modules, threads}. */
export async function assemble(dist, stage) {
  if (!existsSync(join(dist, 'pkg', 'anoscope_bg.wasm'))) {
    throw new Error(`${dist} has no wasm build (pkg/anoscope_bg.wasm): run ./build.sh build first`);
  }
  const version = crateVersion();
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  const modules = moduleFiles();
  for (const f of modules) if (f !== WORKER) cpSync(join(WWW, f), join(stage, f));
  const api = join(stage, 'api.js');
  const manifest = JSON.parse(readFileSync(join(ROOT, 'weights', 'manifest.json'), 'utf8'));
  writeFileSync(api, embed(readFileSync(api, 'utf8'), 'EMBEDDED_MANIFEST', manifest));
  copyBuild(join(dist, 'pkg'), join(stage, 'pkg'));
  const threads = existsSync(join(dist, 'pkg-threads', 'anoscope_bg.wasm'));
  if (threads) copyBuild(join(dist, 'pkg-threads'), join(stage, 'pkg-threads'));
  for (const f of ['README.md', 'LICENSE', 'index.d.ts', 'element.d.ts']) cpSync(join(HERE, f), join(stage, f));

  // The worker's build.json (its check that it, its glue code and its wasm are of one version),
  // written into worker.js with the id: the id covers every other file and worker.js's source.
  let worker = readFileSync(join(WWW, WORKER), 'utf8');
  const h = createHash('sha256');
  for (const p of walk(stage).sort()) h.update(`${relative(stage, p)}\0${sha256(readFileSync(p))}\n`);
  h.update(`${WORKER}\0${sha256(worker)}\n`);
  const id = `npm-${version}-${h.digest('hex').slice(0, 12)}`;
  const build = { schema: 2, id, wasm: wasmEntry(stage, 'pkg') };
  if (threads) build.wasmThreads = wasmEntry(stage, 'pkg-threads');
  worker = embed(embed(worker, 'BUILD_ID', id, "'dev'"), 'EMBEDDED_BUILD', build);
  const { build: esbuild } = await import('esbuild');
  await esbuild({
    stdin: { contents: worker, resolveDir: WWW, sourcefile: WORKER, loader: 'js' },
    outfile: join(stage, WORKER),
    bundle: true,
    format: 'esm',
    target: 'es2022',
    legalComments: 'none',
    logLevel: 'warning',
  });

  const template = JSON.parse(readFileSync(join(HERE, 'package.json'), 'utf8'));
  const files = readdirSync(stage).filter((f) => f !== 'package.json' && f !== 'README.md' && f !== 'LICENSE').sort();
  const pkg = { ...template, version, files };
  delete pkg.private;
  writeFileSync(join(stage, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  return { version, id, modules, threads };
}

/** Assembles into OUT/package and packs into OUT; returns {tarball, stage, version, packed, unpacked, files}. */
export async function pack(dist = join(ROOT, 'www', 'dist'), out = join(ROOT, 'packages', 'anoscope', 'dist')) {
  const stage = join(out, 'package');
  const info = await assemble(dist, stage);
  const json = execFileSync('npm', ['pack', '--json', '--pack-destination', out], { cwd: stage, encoding: 'utf8' });
  const [r] = JSON.parse(json);
  const tarball = join(out, r.filename);
  return {
    ...info,
    tarball,
    stage,
    packed: statSync(tarball).size,
    unpacked: r.unpackedSize,
    files: r.files.map((f) => f.path).sort(),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const r = await pack(process.argv[2] ? resolve(process.argv[2]) : undefined, process.argv[3] ? resolve(process.argv[3]) : undefined);
  console.log(`modules: ${r.modules.join(', ')}`);
  console.log(`threaded build: ${r.threads ? 'included' : 'not built (single-threaded only)'}`);
  console.log(`files: ${r.files.length}; packed ${r.packed} bytes, unpacked ${r.unpacked} bytes; build ${r.id}`);
  console.log(r.tarball);
}
