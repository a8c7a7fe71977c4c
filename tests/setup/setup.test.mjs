// ./build.sh's set-up, run as a newcomer's machine would see it: a PATH with Rust and Node but no
// wasm-bindgen, an empty CARGO_HOME, no node_modules. Under ANOSCOPE_NO_INSTALL=1 every missing piece
// is named with the command that installs it, the run fails, and nothing is written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PIN = /^WASM_BINDGEN_VERSION=(\S+)$/m.exec(readFileSync(join(ROOT, 'build.sh'), 'utf8'))[1];

function which(cmd) {
  const r = spawnSync('bash', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

// A copy of what the set-up reads (build.sh and the npm manifests) in an empty folder, and a bin
// folder with only the tools a newcomer has: Rust through rustup, Node.js and npm, coreutils.
function freshMachine() {
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-setup-'));
  const repo = join(dir, 'repo');
  mkdirSync(repo);
  mkdirSync(join(repo, 'tests', 'embed'), { recursive: true });
  for (const f of ['build.sh', 'package.json', 'package-lock.json', 'tests/embed/package.json', 'tests/embed/package-lock.json']) {
    copyFileSync(join(ROOT, f), join(repo, f));
  }
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  for (const t of ['cargo', 'rustc', 'rustup', 'node', 'npm']) {
    const p = which(t);
    assert.ok(p, `${t} must be on PATH for this test`);
    symlinkSync(p, join(bin, t));
  }
  const cargoHome = join(dir, 'cargo-home');
  mkdirSync(cargoHome);
  const env = {
    ...process.env,
    PATH: `${bin}:/usr/bin:/bin`,
    CARGO_HOME: cargoHome,
    RUSTUP_HOME: process.env.RUSTUP_HOME || join(process.env.HOME, '.rustup'),
    ANOSCOPE_NO_INSTALL: '1',
    ANOSCOPE_CHROMIUM: '',
  };
  delete env.CARGO_TARGET_DIR;
  return { dir, repo, env };
}

test('ANOSCOPE_NO_INSTALL=1 names each missing piece with its install command and writes nothing', () => {
  const { dir, repo, env } = freshMachine();
  try {
    for (const what of ['serve', 'test']) {
      const r = spawnSync('bash', ['build.sh', 'setup', what], { cwd: repo, env, encoding: 'utf8' });
      const out = r.stdout + r.stderr;
      assert.equal(r.status, 1, out);
      assert.match(out, /^setup: ok +Rust: rustc /m);
      assert.match(out, /^setup: ok +Node\.js v\d+/m);
      assert.match(
        out,
        new RegExp(`^setup: missing +wasm-bindgen-cli ${PIN.replaceAll('.', '\\.')} into ${env.CARGO_HOME}/bin .*found: none.*; install it with: cargo install wasm-bindgen-cli --version ${PIN.replaceAll('.', '\\.')}$`, 'm'),
      );
      assert.match(out, /^setup: missing +npm packages with npm ci .*; install it with: npm ci$/m);
      // The docs toolchains the npm package is tested in: for `test` only.
      assert.equal(
        /^setup: missing +VitePress and Vite into tests\/embed with npm ci .*; install it with: \(cd tests\/embed && npm ci\)$/m.test(out),
        what === 'test',
        out,
      );
      assert.match(out, /^error: ANOSCOPE_NO_INSTALL=1 and the pieces above are missing$/m);
      assert.doesNotMatch(out, /^setup: installing/m);
      assert.doesNotMatch(out, /^setup: done/m);
      // One line a step: nothing else but the header and those lines.
      for (const line of out.split('\n').filter(Boolean)) {
        assert.match(line, /^(==> set-up for \.\/build\.sh (serve|test) |setup: (ok|missing|skipped) |error: )/, line);
      }
      // `test` also needs the components and the test tools; `serve` does not look for them.
      assert.equal(/rustfmt and clippy|chromium|lavapipe/.test(out), what === 'test', out);
    }
    // Nothing was written: no node_modules, no target/ or logs, nothing in CARGO_HOME.
    assert.deepEqual(readdirSync(repo).sort(), ['build.sh', 'package-lock.json', 'package.json', 'tests']);
    assert.deepEqual(readdirSync(join(repo, 'tests', 'embed')).sort(), ['package-lock.json', 'package.json']);
    assert.deepEqual(readdirSync(env.CARGO_HOME), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a matching wasm-bindgen in CARGO_HOME/bin is found even when that folder is not on PATH', (t) => {
  const real = which('wasm-bindgen');
  const version = real && spawnSync(real, ['--version'], { encoding: 'utf8' }).stdout.trim();
  if (version !== `wasm-bindgen ${PIN}`) {
    t.skip(`no wasm-bindgen ${PIN} on PATH (set-up installs it)`);
    return;
  }
  const { dir, repo, env } = freshMachine();
  try {
    mkdirSync(join(env.CARGO_HOME, 'bin'));
    symlinkSync(real, join(env.CARGO_HOME, 'bin', 'wasm-bindgen'));
    const r = spawnSync('bash', ['build.sh', 'setup', 'serve'], { cwd: repo, env, encoding: 'utf8' });
    const out = r.stdout + r.stderr;
    assert.match(out, new RegExp(`^setup: ok +wasm-bindgen-cli ${PIN.replaceAll('.', '\\.')} \\(${env.CARGO_HOME}/bin/wasm-bindgen\\)$`, 'm'));
    assert.doesNotMatch(out, /missing +wasm-bindgen/);
    assert.ok(!existsSync(join(repo, 'node_modules')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
