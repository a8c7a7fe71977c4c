// The build id (tests/browser/site-index.mjs) on a small synthetic site: stamped everywhere,
// stable when re-indexed, changed by any page file (a checkpoint through models.json, which
// lists its sha256); a missing stamp fails.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { indexSite } from './site-index.mjs';

const sha = (b) => createHash('sha256').update(b).digest('hex');

function site() {
  const dir = mkdtempSync(join(tmpdir(), 'anoscope-index-'));
  const files = {
    'index.html': '<head>\n  <meta name="anoscope-build" content="dev">\n</head>\n',
    'main.js': "// page\nconst BUILD_ID = 'dev';\n",
    'worker.js': "// worker\nconst BUILD_ID = 'dev';\n",
    'sw.js': "// service worker\nconst BUILD_ID = 'dev';\nconst SHELL_CACHE = `anoscope-shell-${BUILD_ID}`;\n",
    'style.css': 'body {}\n',
    'pkg/anoscope.js': '// glue\n',
    'pkg/anoscope_bg.wasm': Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]),
    'models/test-tiny/config.json': '{}\n',
    'models/test-tiny/model.safetensors': Buffer.alloc(16),
  };
  for (const [rel, bytes] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), bytes);
  }
  return dir;
}

test('the build id is stamped, stable, and changed by any page file', async () => {
  const dir = site();
  try {
    const { id, build } = await indexSite(dir);
    assert.match(id, /^[0-9a-f]{16}$/);
    assert.equal(build.id, id);
    const read = (f) => readFileSync(join(dir, f), 'utf8');
    assert.match(read('index.html'), new RegExp(`<meta name="anoscope-build" content="${id}">`));
    for (const f of ['main.js', 'worker.js', 'sw.js']) assert.match(read(f), new RegExp(`^const BUILD_ID = '${id}';$`, 'm'));
    // Every page file with its sha256 as served (stamped); no checkpoint, no build.json.
    assert.deepEqual(Object.keys(build.files).sort(), ['index.html', 'main.js', 'models.json', 'pkg/anoscope.js', 'pkg/anoscope_bg.wasm', 'style.css', 'sw.js', 'worker.js']);
    for (const [f, h] of Object.entries(build.files)) assert.equal(h, sha(readFileSync(join(dir, f))), f);
    assert.equal(build.wasm.sha256, sha(readFileSync(join(dir, 'pkg/anoscope_bg.wasm'))));
    assert.equal(build.wasm.js.sha256, build.files['pkg/anoscope.js']);
    assert.deepEqual(JSON.parse(read('build.json')), build);

    assert.equal((await indexSite(dir)).id, id, 'indexing again changed the id');
    // A new checkpoint is a new version (models.json lists its sha256).
    writeFileSync(join(dir, 'models/test-tiny/model.safetensors'), Buffer.alloc(16, 1));
    const id1 = (await indexSite(dir)).id;
    assert.notEqual(id1, id);
    appendFileSync(join(dir, 'style.css'), '/* v2 */\n');
    const id2 = (await indexSite(dir)).id;
    assert.notEqual(id2, id1);
    appendFileSync(join(dir, 'pkg/anoscope_bg.wasm'), Buffer.from([0, 2, 1, 0x78]));
    const id3 = (await indexSite(dir)).id;
    assert.notEqual(id3, id2);
    appendFileSync(join(dir, 'sw.js'), '// changed\n');
    assert.notEqual((await indexSite(dir)).id, id3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a page file without its stamp fails the indexing (the version check would be lost)', async () => {
  const dir = site();
  try {
    writeFileSync(join(dir, 'worker.js'), '// no stamp\n');
    await assert.rejects(indexSite(dir), /worker\.js: the build-id stamp .* is missing/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
