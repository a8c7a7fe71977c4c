// ./build.sh weights without a network: a copy of build.sh with a test manifest of the real
// schema, a fake `curl` that serves files from a folder (and records its arguments and what it
// reads on stdin) and a fake `cargo` that records the conversions. Checks that a learned model
// brings its backbone, the sha256 and git-blob checks, the learned-file conversion hookup
// (`anoscope convert --learned`), optional models, gated Hugging Face downloads (the token on curl's stdin, never
// on its command line) and the errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const sha256 = (b) => createHash('sha256').update(b).digest('hex');
// git's blob id, written here independently of build.sh: sha1 of "blob <size>\0" + content.
const gitBlob = (b) => createHash('sha1').update(Buffer.concat([Buffer.from(`blob ${b.length}\0`), b])).digest('hex');

// The served files and the manifest naming them.
const FILES = {
  'https://huggingface.co/t/clip/resolve/r1/config.json': Buffer.from('{"clip": "config"}'),
  'https://huggingface.co/t/clip/resolve/r1/model.safetensors': Buffer.from('clip weights'),
  'https://raw.githubusercontent.com/t/learned/c1/checkpoints/a/epoch_15.pth': Buffer.from('learned a'),
  'https://raw.githubusercontent.com/t/learned/c1/checkpoints/b/epoch_15.pth': Buffer.from('learned b'),
  'https://huggingface.co/t/gated/resolve/r2/x/epoch_15.pth': Buffer.from('gated file'),
  'https://huggingface.co/t/other/resolve/r3/config.json': Buffer.from('{}'),
  'https://huggingface.co/t/other/resolve/r3/model.safetensors': Buffer.from('other'),
};
const U = Object.keys(FILES);

function manifest() {
  const f = (name, url, pins) => ({ name, url, size: null, sha256: null, provenance: 'test', ...pins });
  return {
    schema: 1,
    default: 'clip-test',
    models: [
      {
        name: 'clip-test', optional: true, arch: 'vit-l-14-336', layout: 'hf', repo: 'https://huggingface.co/t/clip', revision: 'r1', license: 'MIT',
        files: [
          f('config.json', U[0], { sha256: sha256(FILES[U[0]]) }),
          f('model.safetensors', U[1], { sha256: sha256(FILES[U[1]]), size: FILES[U[1]].length }),
        ],
      },
      {
        name: 'learned-test', optional: true, kind: 'learned', mode: 'anomalyclip', backbone: 'clip-test',
        repo: 'https://github.com/t/learned', revision: 'c1', license: 'MIT',
        files: [
          // Pinned by its git blob id only, and by sha256 and blob.
          f('trained-on-visa.pth', U[2], { git_blob_sha1: gitBlob(FILES[U[2]]) }),
          f('trained-on-mvtec.pth', U[3], { sha256: sha256(FILES[U[3]]), git_blob_sha1: gitBlob(FILES[U[3]]) }),
        ],
      },
      {
        name: 'gated-test', optional: true, kind: 'learned', mode: 'adaptclip', backbone: 'clip-test', gated: true,
        repo: 'https://huggingface.co/t/gated', revision: 'r2', license: 'test',
        files: [f('trained-on-mvtec.pth', U[4], { sha256: sha256(FILES[U[4]]) })],
      },
      {
        name: 'other', arch: 'vit-b-16', layout: 'hf', convert: ['f16', 'q8'], repo: 'https://huggingface.co/t/other', revision: 'r3', license: 'MIT',
        files: [f('config.json', U[5], { sha256: sha256(FILES[U[5]]) }), f('model.safetensors', U[6], { sha256: sha256(FILES[U[6]]) })],
      },
    ],
  };
}

const FAKE_CURL = `#!/usr/bin/env node
// curl -fL ... [-H @-] -o OUT URL: serves $FAKE_WEB/<key of URL>; logs argv and stdin.
const fs = require('fs');
const args = process.argv.slice(2);
const url = args[args.length - 1];
const out = args[args.indexOf('-o') + 1];
const stdin = args.includes('@-') ? fs.readFileSync(0, 'utf8').trim() : null;
fs.appendFileSync(process.env.FAKE_LOG, JSON.stringify({ tool: 'curl', args, stdin }) + '\\n');
const key = url.replace(/[^A-Za-z0-9]/g, '_');
const src = require('path').join(process.env.FAKE_WEB, key);
if (url.startsWith('https://huggingface.co/t/gated/') && stdin !== 'Authorization: Bearer s3cret') process.exit(22);
if (!fs.existsSync(src)) process.exit(22);
fs.copyFileSync(src, out);
`;

const FAKE_CARGO = `#!/usr/bin/env node
// cargo run --release -q -p anoscope -- <anoscope args>: logs them and writes the outputs.
const fs = require('fs');
const path = require('path');
const a = process.argv.slice(process.argv.indexOf('--') + 1);
fs.appendFileSync(process.env.FAKE_LOG, JSON.stringify({ tool: 'cargo', args: a }) + '\\n');
const opt = (k) => a[a.indexOf(k) + 1];
if (a[0] === 'convert' && a.includes('--help')) {
  console.log(process.env.FAKE_NO_LEARNED ? '  --model <MODEL>' : '  --model <MODEL>\\n  --learned <LEARNED>');
} else if (a[0] === 'convert' && a.includes('--learned')) {
  fs.writeFileSync(opt('--out'), 'f16 of ' + fs.readFileSync(opt('--learned'), 'utf8'));
} else if (a[0] === 'convert') {
  if (process.env.FAKE_CONVERT_FAIL === opt('--dtype')) process.exit(1);
  fs.mkdirSync(opt('--out'), { recursive: true });
  // As many bytes as the dtype's name says, so the sizes printed can be checked.
  fs.writeFileSync(path.join(opt('--out'), 'model.safetensors'), opt('--dtype').repeat(1000));
} else if (a[0] === 'prompts') {
  fs.writeFileSync(opt('--out'), 'prompts');
}
`;

function world() {
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-weights-'));
  const repo = join(dir, 'repo');
  mkdirSync(join(repo, 'weights'), { recursive: true });
  copyFileSync(join(ROOT, 'build.sh'), join(repo, 'build.sh'));
  writeFileSync(join(repo, 'weights', 'manifest.json'), JSON.stringify(manifest(), null, 2));
  const web = join(dir, 'web');
  mkdirSync(web);
  for (const [url, bytes] of Object.entries(FILES)) writeFileSync(join(web, url.replace(/[^A-Za-z0-9]/g, '_')), bytes);
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'curl'), FAKE_CURL);
  writeFileSync(join(bin, 'cargo'), FAKE_CARGO);
  chmodSync(join(bin, 'curl'), 0o755);
  chmodSync(join(bin, 'cargo'), 0o755);
  symlinkSync(process.execPath, join(bin, 'node'));
  const log = join(dir, 'log.jsonl');
  writeFileSync(log, '');
  const env = { PATH: `${bin}:/usr/bin:/bin`, HOME: dir, FAKE_WEB: web, FAKE_LOG: log };
  const run = (args, extra = {}) => {
    const r = spawnSync('bash', ['build.sh', 'weights', ...args], { cwd: repo, env: { ...env, ...extra }, encoding: 'utf8' });
    return { status: r.status, out: r.stdout + r.stderr };
  };
  const calls = () => readFileSync(log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  return { dir, repo, web, run, calls };
}

test('a learned model comes with its backbone, is verified and converted with convert --learned', () => {
  const w = world();
  try {
    const r = w.run(['learned-test']);
    assert.equal(r.status, 0, r.out);
    const got = w.calls();
    const fetched = got.filter((c) => c.tool === 'curl').map((c) => c.args.at(-1));
    // The backbone first, then the learned files; nothing of the other models.
    assert.deepEqual(fetched, [U[0], U[1], U[2], U[3]]);
    for (const [m, f, url] of [
      ['clip-test', 'config.json', U[0]], ['clip-test', 'model.safetensors', U[1]],
      ['learned-test', 'trained-on-visa.pth', U[2]], ['learned-test', 'trained-on-mvtec.pth', U[3]],
    ]) {
      assert.deepEqual(readFileSync(join(w.repo, 'weights/checkpoints', m, f)), FILES[url]);
    }
    assert.match(r.out, new RegExp(`ok: weights/checkpoints/learned-test/trained-on-visa\\.pth \\(9 bytes, git blob ${gitBlob(FILES[U[2]])} verified\\)`));
    assert.match(r.out, new RegExp(`sha256 ${sha256(FILES[U[2]])}  <- pin it`));
    assert.match(r.out, /ok: weights\/checkpoints\/learned-test\/trained-on-mvtec\.pth \(9 bytes, sha256 and git blob verified\)/);
    const cargo = got.filter((c) => c.tool === 'cargo').map((c) => c.args.join(' '));
    assert.deepEqual(cargo, [
      'convert --model weights/checkpoints/clip-test --dtype f16 --out weights/checkpoints/clip-test-f16',
      'prompts build --model weights/checkpoints/clip-test --out weights/checkpoints/clip-test/prompts.safetensors',
      'prompts build --model weights/checkpoints/clip-test-f16 --out weights/checkpoints/clip-test-f16/prompts.safetensors',
      'convert --help',
      'convert --learned weights/checkpoints/learned-test/trained-on-visa.pth --model weights/checkpoints/clip-test --dtype f16 --out weights/checkpoints/learned-test/trained-on-visa-f16.safetensors',
      'convert --learned weights/checkpoints/learned-test/trained-on-mvtec.pth --model weights/checkpoints/clip-test --dtype f16 --out weights/checkpoints/learned-test/trained-on-mvtec-f16.safetensors',
    ]);
    assert.equal(readFileSync(join(w.repo, 'weights/checkpoints/learned-test/trained-on-visa-f16.safetensors'), 'utf8'), 'f16 of learned a');
    assert.match(r.out, /^ready: weights\/checkpoints\/learned-test$/m);
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/other')));

    // Without `convert --learned` in this anoscope: said, the .pth files kept, success.
    const again = w.run(['learned-test'], { FAKE_NO_LEARNED: '1' });
    assert.equal(again.status, 0, again.out);
    assert.match(again.out, /note: this anoscope has no 'convert --learned' yet: learned-test's \.pth files are kept as published/);
    // Files already in place were re-verified, not downloaded again.
    assert.equal(w.calls().filter((c) => c.tool === 'curl').length, 4);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('without names, the models not marked optional are fetched, and the others named', () => {
  const w = world();
  try {
    const r = w.run(['--no-convert']);
    assert.equal(r.status, 0, r.out);
    assert.deepEqual(w.calls().filter((c) => c.tool === 'curl').map((c) => c.args.at(-1)), [U[5], U[6]]);
    assert.match(r.out, /^ready: weights\/checkpoints\/other$/m);
    assert.match(r.out, /^also in the manifest, fetched when named: \.\/build\.sh weights clip-test learned-test gated-test$/m);
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/clip-test')));
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('a model whose manifest entry lists q8 gets a q8 variant next to the f16 one, sizes stated', () => {
  const w = world();
  try {
    const r = w.run([]);
    assert.equal(r.status, 0, r.out);
    const cargo = w.calls().filter((c) => c.tool === 'cargo').map((c) => c.args.join(' '));
    assert.deepEqual(cargo, [
      'convert --model weights/checkpoints/other --dtype f16 --out weights/checkpoints/other-f16',
      'convert --model weights/checkpoints/other --dtype q8 --out weights/checkpoints/other-q8',
      'prompts build --model weights/checkpoints/other --out weights/checkpoints/other/prompts.safetensors',
      'prompts build --model weights/checkpoints/other-f16 --out weights/checkpoints/other-f16/prompts.safetensors',
      'prompts build --model weights/checkpoints/other-q8 --out weights/checkpoints/other-q8/prompts.safetensors',
    ]);
    assert.equal(readFileSync(join(w.repo, 'weights/checkpoints/other-q8/model.safetensors'), 'utf8'), 'q8'.repeat(1000));
    assert.equal(readFileSync(join(w.repo, 'weights/checkpoints/other-q8/prompts.safetensors'), 'utf8'), 'prompts');
    // The sizes of both variants are stated.
    assert.match(r.out, /^ok: weights\/checkpoints\/other-f16 \(f16, the page's reference; 3000 bytes, 0\.0 MB\)$/m);
    assert.match(r.out, /^ok: weights\/checkpoints\/other-q8 \(q8: int8 image tower, faster and smaller, for the page; 2000 bytes, 0\.0 MB\)$/m);

    // A model without "convert" gets the f16 variant only.
    const l = w.run(['clip-test']);
    assert.equal(l.status, 0, l.out);
    assert.ok(existsSync(join(w.repo, 'weights/checkpoints/clip-test-f16/model.safetensors')));
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/clip-test-q8')));
    assert.ok(!w.calls().some((c) => c.tool === 'cargo' && c.args.join(' ').includes('clip-test --dtype q8')));

    // A failed q8 conversion is an error, and not reported as written.
    const f = w.run([], { FAKE_CONVERT_FAIL: 'q8' });
    assert.equal(f.status, 1, f.out);
    assert.match(f.out, /^error: converting weights\/checkpoints\/other to q8 failed$/m);
    assert.doesNotMatch(f.out, /^ok: weights\/checkpoints\/other-q8/m);
    assert.match(f.out, /^ok: weights\/checkpoints\/other-f16 /m);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('a file whose git blob id differs is refused and deleted; an unknown model is named', () => {
  const w = world();
  try {
    writeFileSync(join(w.web, U[2].replace(/[^A-Za-z0-9]/g, '_')), 'tampered');
    const r = w.run(['learned-test', '--no-convert']);
    assert.equal(r.status, 1, r.out);
    assert.match(r.out, /error: learned-test\/trained-on-visa\.pth does not match weights\/manifest\.json/);
    assert.match(r.out, new RegExp(`git blob ${gitBlob(Buffer.from('tampered'))}; expected .* git blob ${gitBlob(FILES[U[2]])}`));
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/learned-test/trained-on-visa.pth')));
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/learned-test/trained-on-visa.pth.part')));
    assert.match(r.out, /nothing was converted/);

    const u = w.run(['anomalyclip2']);
    assert.equal(u.status, 1);
    assert.match(u.out, /no model 'anomalyclip2' in weights\/manifest\.json \(models: clip-test learned-test gated-test other/);
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('a gated Hugging Face file needs HF_TOKEN, which curl reads on stdin only', () => {
  const w = world();
  try {
    const r = w.run(['gated-test', '--no-convert']);
    assert.equal(r.status, 1, r.out);
    assert.match(r.out, /https:\/\/huggingface\.co\/t\/gated refused the download of gated-test\/trained-on-mvtec\.pth \(HTTP error\): the repository is gated/);
    assert.match(r.out, /rerun with HF_TOKEN set/);
    assert.ok(!existsSync(join(w.repo, 'weights/checkpoints/gated-test/trained-on-mvtec.pth')));

    const ok = w.run(['gated-test', '--no-convert'], { HF_TOKEN: 's3cret' });
    assert.equal(ok.status, 0, ok.out);
    assert.deepEqual(readFileSync(join(w.repo, 'weights/checkpoints/gated-test/trained-on-mvtec.pth')), FILES[U[4]]);
    const curls = w.calls().filter((c) => c.tool === 'curl');
    const gated = curls.filter((c) => c.args.at(-1) === U[4]);
    assert.equal(gated.at(-1).stdin, 'Authorization: Bearer s3cret');
    // The token never on a command line, and never sent to another host.
    for (const c of curls) assert.ok(!c.args.join(' ').includes('s3cret'), c.args.join(' '));
    for (const c of curls.filter((c) => !c.args.at(-1).startsWith('https://huggingface.co/'))) assert.equal(c.stdin, null);
    assert.ok(!ok.out.includes('s3cret'));
  } finally {
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('build.sh computes the git blob id as git does', (t) => {
  const git = spawnSync('bash', ['-c', 'command -v git'], { encoding: 'utf8' }).stdout.trim();
  if (!git) {
    t.skip('no git');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-blob-'));
  try {
    const f = join(dir, 'x.bin');
    writeFileSync(f, Buffer.from([0, 1, 2, 255, 10, 0]));
    const want = spawnSync(git, ['hash-object', f], { encoding: 'utf8' }).stdout.trim();
    assert.equal(gitBlob(readFileSync(f)), want);
    const src = readFileSync(join(ROOT, 'build.sh'), 'utf8');
    const fn = /^git_blob_sha1_of\(\) \{[\s\S]*?^\}$/m.exec(src)[0];
    const got = spawnSync('bash', ['-c', `${fn}\ngit_blob_sha1_of "$1"`, 'bash', f], { encoding: 'utf8' });
    assert.equal(got.stdout.trim(), want, got.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
