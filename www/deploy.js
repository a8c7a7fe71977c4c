// One version at a time: the checks that keep a half-deployed site from running mixed, and the
// messages that say so (docs/page.md, "Upgrades and deployment"). Every assembled site carries a
// build id (tests/browser/site-index.mjs stamps it into index.html, main.js, worker.js, sw.js and
// writes it into build.json with the sha256 of every file). The page and the detector worker
// compare what they were served with; any difference stops them before the model is touched.
import { sha256Hex } from './common.js';

/** An error that says the server's files are from different versions. */
export class DeployMismatch extends Error {
  constructor(message) {
    super(message);
    this.name = 'DeployMismatch';
  }
}

const AGAIN = 'the site is being redeployed: reload in a minute. Nothing was started.';

/** "abcdef012345…" for a sha256 in a message. */
const short = (sha) => (sha ? `${sha.slice(0, 12)}…` : '?');

/** The server's build.json (past the HTTP cache), or null when it cannot be read. */
export async function fetchBuild(base) {
  try {
    const res = await fetch(new URL('build.json', base), { cache: 'no-cache' });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
}

/** The page's files that carry no stamp: checked against build.json's sha256 by checkPage. */
const UNSTAMPED = ['common.js', 'deploy.js', 'photo-view.js', 'style.css', 'photo-view.css'];

/**
 * The page's check, before the worker starts: index.html's stamp, main.js's and build.json's id
 * must agree, and the server's copies of the page's unstamped files must be the ones build.json
 * lists. Returns {build, problem}: problem is the message to show, or null.
 */
export async function checkPage(mainId, base) {
  const pageId = document.querySelector('meta[name="anoscope-build"]')?.content || '(none)';
  const build = await fetchBuild(base);
  // Unreadable build.json: the worker cannot start either, and says why.
  if (!build) return { build, problem: null };
  let problem = null;
  if (pageId !== mainId) {
    problem = `This page's index.html is version ${pageId} but its main.js is version ${mainId}: ${AGAIN}`;
  } else if (build.id !== pageId) {
    problem =
      `This page is version ${pageId} but the server's build.json says ${build.id ?? '(no id)'} ` +
      `(wasm sha256 ${short(build.wasm?.sha256)}): ${AGAIN}`;
  }
  for (const file of problem ? [] : UNSTAMPED) {
    const want = build.files?.[file];
    if (!want) continue;
    try {
      const res = await fetch(new URL(file, base), { cache: 'no-cache' });
      if (!res.ok) {
        problem = `The server has no ${file} of version ${build.id} (HTTP ${res.status}): ${AGAIN}`;
        break;
      }
      const got = await sha256Hex(await res.arrayBuffer());
      if (got !== want) {
        problem = `The server's ${file} is not the one of version ${build.id} (sha256 ${short(got)}, expected ${short(want)}): ${AGAIN}`;
        break;
      }
    } catch {
      // Unreachable: offline without the service worker; the worker says so.
    }
  }
  return { build, problem };
}

/** The worker's check of build.json against its own id and the page's (?build=). */
export function checkWorker(build, workerId, pageId) {
  if (pageId && pageId !== workerId) {
    throw new DeployMismatch(`This page is version ${pageId} but the server's worker.js is version ${workerId}: ${AGAIN}`);
  }
  if (build.id !== workerId) {
    throw new DeployMismatch(
      `The detector (worker.js) is version ${workerId} but the server's build.json says ${build.id ?? '(no id)'} ` +
        `(wasm sha256 ${short(build.wasm?.sha256)}): ${AGAIN}`,
    );
  }
}

/**
 * Fetches a file of the build and checks it against the sha256 build.json lists: `what` names it
 * in the message. Returns the bytes.
 */
export async function fetchVerified(url, want, build, what) {
  const res = await fetch(url, { cache: 'no-cache' });
  if (!res.ok) throw new Error(`${what}: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const got = await sha256Hex(bytes);
  if (got !== want) {
    throw new DeployMismatch(
      `${what} failed its integrity check (sha256 ${got}, expected ${want}): it is not the file build.json ` +
        `of version ${build.id ?? '(no id)'} lists. The server's files are from different builds (a deploy in ` +
        'progress: reload in a minute) or damaged (rebuild the site with ./build.sh). Nothing was started.',
    );
  }
  return { bytes, sha256: got };
}

/** A stand-in for the detector client when the page refused to start: every call says why. */
export function refusedClient(problem) {
  const ready = Promise.reject(new DeployMismatch(problem));
  ready.catch(() => {});
  return {
    ready,
    call: () => Promise.reject(new DeployMismatch(problem)),
    terminate() {},
  };
}
