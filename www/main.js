// The page's UI thread: inputs, drawing and messages. All model work happens in worker.js.
import { chooseVariant, DetectorClient, formatBytes, servedModels, variantLabel, variantsOf, verdict, WEIGHTS_CACHE } from './common.js';
import { checkPage, refusedClient } from './deploy.js';
import { PhotoView, largestRegion } from './photo-view.js';

// This file's version, stamped by tests/browser/site-index.mjs (see deploy.js).
const BUILD_ID = 'dev';

const $ = (id) => document.getElementById(id);
const els = {
  engine: $('engine-status'),
  backend: $('backend'),
  backendChoice: $('backend-choice'),
  message: $('message'),
  modelStatus: $('model-status'),
  modelSources: $('model-sources'),
  variantNote: $('variant-note'),
  modelFiles: $('model-files'),
  promptFile: $('prompt-file'),
  learnedFile: $('learned-file'),
  progressBox: $('progress-box'),
  progress: $('progress'),
  progressText: $('progress-text'),
  category: $('category'),
  mode: $('mode'),
  modeNote: $('mode-note'),
  object: $('object'),
  defects: $('defects'),
  encode: $('encode'),
  textStatus: $('text-status'),
  refsBox: $('refs-box'),
  refsDrop: $('refs-drop'),
  refsFiles: $('refs-files'),
  refsStatus: $('refs-status'),
  refsClear: $('refs-clear'),
  drop: $('drop'),
  imageFiles: $('image-files'),
  folderFiles: $('folder-files'),
  webcam: $('webcam'),
  webcamStatus: $('webcam-status'),
  video: $('video'),
  imageStatus: $('image-status'),
  verdict: $('verdict'),
  overlay: $('overlay'),
  opacity: $('opacity'),
  threshold: $('threshold'),
  thresholdValue: $('threshold-value'),
  exportPng: $('export-png'),
  exportJson: $('export-json'),
  gridBox: $('grid-box'),
  grid: $('grid'),
  gridNote: $('grid-note'),
  cancel: $('cancel'),
  photo: $('photo'),
  photoSide: $('photo-side'),
  photoNote: $('photo-note'),
  boxes: $('boxes'),
  resultView: $('result-view'),
  regionsBox: $('regions-box'),
  regionsNote: $('regions-note'),
  regions: $('regions'),
  tiles: $('tiles'),
  exportCsv: $('export-csv'),
  views: document.querySelector('#result-view .views'),
  zoomIn: $('zoom-in'),
  zoomOut: $('zoom-out'),
  zoom1: $('zoom-1'),
  zoomFit: $('zoom-fit'),
  zoomValue: $('zoom-value'),
};

const state = {
  limits: null,
  model: null, // {label, test, hasText, categories, imageSize}
  busy: false,
  current: null, // {name, score, width, height}
  results: [], // [{name, score, map, input, width, height, batchIndex?}]
  webcam: null, // {stream, frames, t0, running}
  // Concurrency (see "runs, settings stamps, cancel and restarts" below).
  modelSeq: 0, // bumped when a model load starts: results computed before it are stale
  refsGen: 0, // bumped when the few-shot references change
  promptsGen: 0, // bumped when a prompt file is loaded
  loading: null, // the model load (or worker restart) in progress: runs wait for it
  modelSpec: null, // how the loaded model was loaded (a worker restart loads it again)
  promptFile: null, // the prompt file loaded for it, if any
  learnedFile: null, // {file, imageSize}: the learned file dropped or picked for it, if any
  learnedGen: 0, // bumped when a dropped learned file is loaded
  refFiles: null, // the few-shot reference files embedded, if any
  workerGen: 1, // bumped each time the worker is restarted
  restarting: null, // the restart in progress
  gridStamp: null, // {stamp, text}: the settings the grid's results were computed with
};

// ---------------------------------------------------------------------------
// messages and progress

function showMessage(text, kind = 'error') {
  els.message.textContent = text;
  els.message.className = `message ${kind}`;
  els.message.hidden = false;
}

function clearMessage() {
  els.message.hidden = true;
  els.message.textContent = '';
}

function setStatus(el, text, kind = '') {
  el.textContent = text;
  el.className = kind;
}

let progressSeq = 0; // the latest progress report (a finished step hides the bar unless one came after)

function onProgress({ stage, done, total, label }) {
  els.progressBox.hidden = false;
  let text;
  if (stage === 'download') {
    text = `${label}: ${formatBytes(done)}${total ? ` of ${formatBytes(total)}` : ''}`;
  } else if (stage === 'tiles') {
    text = `Tiled inspection: ${label} (pass ${done} of ${total})`;
  } else if (stage === 'batch') {
    text = `MuSc ${label ?? ''}: ${done} of ${total}`;
  } else {
    text = label ?? stage;
  }
  if (total) {
    els.progress.max = total;
    els.progress.value = done;
  } else {
    els.progress.removeAttribute('value');
  }
  els.progressText.textContent = text;
  // A finished step (a download included: a streamed checkpoint finishes after the model is
  // usable) hides the bar shortly after, unless a newer step has shown it again meanwhile.
  const seq = (progressSeq += 1);
  if (total && done >= total) {
    setTimeout(() => {
      if (seq === progressSeq) els.progressBox.hidden = true;
    }, 400);
  }
}

// ---------------------------------------------------------------------------
// the worker

// ?threads=N forces the worker's thread count (1 = the single-threaded build); default: all cores
// when the page is cross-origin isolated and the threaded build exists.
// ?backend=auto|gpu|cpu picks where the image tower runs (auto: WebGPU on a hardware adapter, else
// the CPU); ?gpufail=adapter|forward is the test hook that makes the GPU fail.
const workerUrl = new URL('./worker.js', import.meta.url);
const pageParams = new URLSearchParams(location.search);
const threadsParam = pageParams.get('threads');
if (threadsParam && /^[0-9]{1,3}$/.test(threadsParam)) workerUrl.searchParams.set('threads', threadsParam);
const backendParam = pageParams.get('backend');
if (['auto', 'gpu', 'cpu'].includes(backendParam)) workerUrl.searchParams.set('backend', backendParam);
const gpuFailParam = pageParams.get('gpufail');
if (gpuFailParam && /^[a-z,]{1,40}$/.test(gpuFailParam)) workerUrl.searchParams.set('gpufail', gpuFailParam);
// ?cachefail=quota|unavailable|cleared: the test hook that makes storing the checkpoint fail.
const cacheFailParam = pageParams.get('cachefail');
if (['quota', 'unavailable', 'cleared'].includes(cacheFailParam)) workerUrl.searchParams.set('cachefail', cacheFailParam);
// ?memcap=MB (test hook): the worker leaves only MB megabytes of WebAssembly memory free, so a
// big batch runs out of memory for real (oom.test.mjs).
const memcapParam = pageParams.get('memcap');
if (memcapParam && /^[0-9]{1,5}$/.test(memcapParam)) workerUrl.searchParams.set('memcap', memcapParam);
// ?stepdelay=MS (test hook): every scoring step takes MS ms longer, to act in the middle of a run.
const stepDelayParam = pageParams.get('stepdelay');
if (stepDelayParam && /^[0-9]{1,5}$/.test(stepDelayParam)) workerUrl.searchParams.set('stepdelay', stepDelayParam);
// ?blockdelay=MS (test hook): every transformer block of a CPU image pass takes MS ms longer.
const blockDelayParam = pageParams.get('blockdelay');
if (blockDelayParam && /^[0-9]{1,5}$/.test(blockDelayParam)) workerUrl.searchParams.set('blockdelay', blockDelayParam);
// ?plantmap=1 (test hook): each single image's map is replaced by a known pattern (one hot cell)
// before it goes back onto the photo (photo.test.mjs).
if (pageParams.get('plantmap') === '1') workerUrl.searchParams.set('plantmap', '1');
// ?relaxedprobe=fail (test hook): the worker's relaxed-SIMD probe fails, as on an engine without
// relaxed SIMD, so the SIMD128 module runs (relaxed.test.mjs).
if (pageParams.get('relaxedprobe') === 'fail') workerUrl.searchParams.set('relaxedprobe', 'fail');
// ?int8dot=simd128|relaxed (test hook): the int8 dot product the module runs instead of its own
// choice (the relaxed one only in the relaxed-SIMD module).
const int8DotParam = pageParams.get('int8dot');
if (['simd128', 'relaxed'].includes(int8DotParam)) workerUrl.searchParams.set('int8dot', int8DotParam);
// The worker checks that it is this page's version (deploy.js).
workerUrl.searchParams.set('build', BUILD_ID);
// A half-deployed site (this page and the server's build.json differ) starts no worker.
const deploy = await checkPage(BUILD_ID, location.href);
if (deploy.problem) refuseToStart(deploy.problem);
let client = deploy.problem ? refusedClient(deploy.problem) : makeClient();

function makeClient() {
  const c = new DetectorClient(workerUrl, {
    onProgress,
    onModel,
    onStorage,
    onFatal: (error, data = {}) => {
      if (data.deploy) return refuseToStart(error); // the worker found files of another version
      // A trap after start (out of memory, or a crash): a new worker takes over.
      if ('oom' in data) {
        if (c === client) restartWorker(data);
        return;
      }
      setStatus(els.engine, error, 'error');
      showMessage(error);
    },
    onBackend: (b) => {
      showBackend(b);
      if (b.failure && !b.relabel) showMessage(`${b.failure}. Running on the CPU (WebAssembly) instead.`, 'warn');
    },
  });
  // A trap in a pool thread of the threaded build is reported here (see pool-guard.js).
  c.worker.addEventListener('message', ({ data }) => {
    if (data?.type !== 'poolChannel' || c.pool) return;
    c.pool = new BroadcastChannel(data.name);
    c.pool.onmessage = ({ data: report }) => {
      if (c === client && report?.type === 'fatal') restartWorker(report);
    };
  });
  // Cancel flag the worker reads even inside a long synchronous call (cross-origin isolated
  // pages only: SharedArrayBuffer); elsewhere a {type:'cancel'} message does it between steps.
  if (globalThis.crossOriginIsolated && typeof SharedArrayBuffer === 'function') {
    c.cancelFlag = new Int32Array(new SharedArrayBuffer(4));
    c.worker.postMessage({ type: 'cancelFlag', payload: { buffer: c.cancelFlag.buffer } });
  }
  return c;
}

/** The page and the server are from different versions: say which, start nothing. */
function refuseToStart(problem) {
  setStatus(els.engine, 'Not started: this page and the server are from different versions of the site.', 'error');
  showMessage(problem);
  document.body.dataset.deploy = 'mismatch';
}

/** b: the worker's backend info {gpu, backend, label, note, failure, threads}. */
function showBackend(b) {
  if (!b) {
    els.backend.textContent = '?';
    return;
  }
  els.backend.textContent = b.label + (b.failure ? ` (${b.failure})` : b.note ? ` (${b.note})` : '');
  els.backend.dataset.threads = String(b.threads);
  els.backend.dataset.gpu = String(!!b.gpu);
  // Which module variant runs, and why not the relaxed-SIMD one (a hover note); the int8 dot
  // product (why the SIMD128 one runs in the relaxed module).
  els.backend.dataset.relaxed = String(!!b.relaxedSimd);
  els.backend.dataset.int8Dot = b.int8Dot ?? '';
  els.backend.title = [b.simdNote ? `SIMD128 module: ${b.simdNote}` : '', b.dotNote ?? ''].filter(Boolean).join('\n');
  els.backendChoice.value = b.backend;
}
els.backendChoice.value = ['gpu', 'cpu'].includes(backendParam) ? backendParam : 'auto';
els.backendChoice.addEventListener('change', () => {
  const url = new URL(location.href);
  if (els.backendChoice.value === 'auto') url.searchParams.delete('backend');
  else url.searchParams.set('backend', els.backendChoice.value);
  location.assign(url);
});

function enableInputs(on) {
  for (const el of [els.imageFiles, els.folderFiles, els.category, els.encode, els.webcam, els.promptFile, els.learnedFile]) {
    el.disabled = !on;
  }
}

async function run(label, fn) {
  clearMessage();
  try {
    return await fn();
  } catch (e) {
    showMessage(`${label}: ${e?.message ?? e}`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// runs, settings stamps, cancel and restarts
//
// Every scoring action (a drop, a paste, picked files or a folder) is a run. Runs go one at a
// time in the order they came (two drops at once: both are scored, the second after the first;
// the grid shows the later one's results). A run started while a model loads waits for it.
// Each request carries a settings stamp taken when it is sent; a result whose stamp no longer
// matches the page's settings is discarded, never drawn. Cancel (the button: the run and the
// queued ones; a model change or a worker restart: the run in progress, the queued ones then run
// with the new model) stops a run between images, and the worker at its next progress step.
// Hiding the tab does not pause a run (it finishes in the background); it stops the webcam.

const runs = { active: null, queued: [], chain: Promise.resolve() };

/** Queues `fn(run)`; run.cancelled holds the reason once cancelled. */
function startRun(what, fn) {
  const run = { what, cancelled: null };
  if (runs.active || runs.queued.length || state.loading) {
    setStatus(els.imageStatus, `Queued: ${what} will be scored when the current work is done.`, 'busy');
  }
  runs.queued.push(run);
  showCancel();
  const p = runs.chain.then(async () => {
    runs.queued.splice(runs.queued.indexOf(run), 1);
    if (run.cancelled) return;
    runs.active = run;
    showCancel();
    try {
      while (state.loading) {
        setStatus(els.imageStatus, `Waiting for the model to load before scoring ${what}…`, 'busy');
        await state.loading.catch(() => {});
      }
      if (!run.cancelled) await fn(run);
    } catch (e) {
      if (!state.restarting) showMessage(`Could not score ${what}: ${e?.message ?? e}`);
    } finally {
      runs.active = null;
      showCancel();
    }
  });
  runs.chain = p.catch(() => {});
  return p;
}

/** Cancels the run in progress (and with `queued`, every queued run too), and tells the worker. */
function cancelRuns(why, { queued = true } = {}) {
  for (const r of [runs.active, ...(queued ? runs.queued : [])]) if (r && !r.cancelled) r.cancelled = why;
  const upTo = client.nextId - 1;
  if (client.cancelFlag) Atomics.store(client.cancelFlag, 0, upTo);
  client.worker.postMessage({ type: 'cancel', payload: { upTo } });
  showCancel();
}

let cancelTimer = null;
/** The cancel button shows while a run goes on (after a moment, so a quick image does not flash it). */
function showCancel() {
  const on = !!(runs.active && !runs.active.cancelled) || runs.queued.some((r) => !r.cancelled);
  clearTimeout(cancelTimer);
  if (!on) {
    els.cancel.hidden = true;
    return;
  }
  cancelTimer = setTimeout(() => (els.cancel.hidden = false), 250);
}
els.cancel.addEventListener('click', () => {
  cancelRuns('cancelled');
  setStatus(els.imageStatus, 'Cancelling…', 'busy');
});

/** The settings a result of `mode` depends on (the threshold and opacity are not among them). */
function settingsStamp(mode) {
  const prompts = mode === 'batch' ? null : { text: textSpec(), file: state.promptsGen };
  const tiles = mode === 'batch' ? null : els.tiles.value;
  const withRefs = mode === 'fewshot' || mode === 'adaptclip';
  const learned = LEARNED_LABELS[mode] ? state.learnedGen : null;
  return JSON.stringify({ model: state.modelSeq, mode, prompts, refs: withRefs ? state.refsGen : null, tiles, learned });
}

/** The settings in words, and as fields for each result (export). */
function settingsOf(mode) {
  const t = textSpec();
  const fields = { model: state.model?.label, mode };
  if (mode !== 'batch') Object.assign(fields, { category: t.category, object: t.object, defects: t.defects });
  const what = mode === 'batch' ? '' : `, ${t.object ? `object “${t.object}”` : `category ${t.category}`}${t.defects ? `, defects ${t.defects.join(', ')}` : ''}`;
  return { fields, text: `${state.model?.label ?? 'no model'}, ${mode} mode${what}` };
}

/** Says what the grid's results were computed with, and when the page's settings now differ. */
function updateGridNote() {
  const g = state.gridStamp;
  if (!g || els.gridBox.hidden) return;
  const same = g.stamp === settingsStamp(els.mode.value);
  els.gridNote.textContent = same
    ? `Scored with ${g.text}.`
    : `Scored with ${g.text}; the settings have changed since (now ${settingsOf(els.mode.value).text}): drop the images again to score them with the current settings.`;
  els.gridNote.className = same ? 'note' : 'note warn';
  els.gridNote.dataset.stale = String(!same);
}
for (const el of [els.mode, els.category, els.tiles]) el.addEventListener('change', updateGridNote);
for (const el of [els.object, els.defects]) el.addEventListener('input', updateGridNote);

const OOM_ADVICE =
  "needs more than the browser's WebAssembly memory (4 GiB). Score fewer images at once, use smaller tiles, or load the f16 checkpoint.";

/**
 * The worker trapped (out of memory, or a crash) and cannot be used again: terminate it, start a
 * new one, load the same model from the same source (the Cache API copy, the served file or the
 * dropped file), its prompt file and references, and put the shown result back. Settings (mode,
 * category, prompts, threshold) live in the page and stay; so does every result already scored.
 */
function restartWorker(data) {
  const old = client;
  if (state.restarting) {
    // The restarted worker failed too while the model was loaded again: stop there.
    old.pool?.close();
    old.terminate();
    state.model = null;
    enableInputs(false);
    setStatus(els.modelStatus, 'No model loaded.', 'error');
    showMessage(
      `${data.oom ? 'Out of memory' : `The detector crashed (${data.error})`} again while the model was loaded again. ` +
        'Your results are kept (export them now); reload the page or choose a smaller (f16) checkpoint.',
    );
    state.restartFailed = true;
    return;
  }
  const what = runs.active;
  state.crash = data;
  state.restartFailed = false;
  state.restarting = (async () => {
    cancelRuns('the detector was restarted', { queued: false }); // queued drops run after the restart
    old.pool?.close();
    old.terminate();
    state.workerGen += 1;
    document.body.dataset.workerGen = String(state.workerGen);
    const head = !data.oom
      ? `The detector crashed (${data.error}).`
      : data.request === 'load'
        ? "Out of memory while loading the model: it needs more than the browser's WebAssembly memory (4 GiB). Load the f16 checkpoint or a smaller model."
        : `Out of memory: ${what?.count === 1 ? 'this image' : 'this batch'} ${OOM_ADVICE}`;
    showMessage(`${head} Restarting the detector…`);
    client = makeClient();
    try {
      await client.ready;
    } catch (e) {
      showMessage(`${head} The detector could not be restarted: ${e?.message ?? e}. Reload the page.`);
      return;
    }
    let restored = [];
    if (state.modelSpec) {
      const mode = els.mode.value; // a dropped learned file's mode is offered again below
      const ok = await loadModel(state.modelSpec, { restore: true });
      if (!ok || state.restartFailed) return;
      restored.push(`${state.model.label} is loaded again`);
      if (state.promptFile) {
        await client.call('loadPrompts', { bytes: await state.promptFile.arrayBuffer() }).then(
          () => restored.push('its prompt file too'),
          (e) => restored.push(`its prompt file could not be loaded again (${e?.message ?? e}): pick it again`),
        );
      }
      if (state.learnedFile) {
        const { file, imageSize } = state.learnedFile;
        await client.call('loadLearned', { bytes: await file.arrayBuffer(), imageSize, name: file.name }).then(
          (r) => {
            state.model.learned = { ...r.learned, file: file.name };
            updateLearnedModes(state.model, mode);
            showLoaded(state.model);
            restored.push(`its learned file ${file.name} too`);
          },
          (e) => {
            state.learnedFile = null;
            restored.push(`its learned file could not be loaded again (${e?.message ?? e}): drop it again`);
          },
        );
      }
      if (state.refFiles) {
        const files = await Promise.all(state.refFiles.map(fileItem));
        await client.call('references', { files, mode: els.mode.value }).then(
          () => restored.push(`${files.length} reference image(s) embedded again`),
          (e) => {
            state.refFiles = null;
            setStatus(els.refsStatus, 'No references: drop them again.', 'error');
            restored.push(`the reference images could not be embedded again (${e?.message ?? e}): drop them again`);
          },
        );
      }
      const c = state.current;
      if (c?.map) await client.call('setCurrent', currentSpec(c)).catch(() => {});
    }
    els.progressBox.hidden = true;
    const kept = state.results.length || (state.current ? 1 : 0);
    showMessage(
      `${head} The detector was restarted${restored.length ? `: ${restored.join(', ')}` : ''}. ` +
        `Your settings and the ${kept} result${kept === 1 ? '' : 's'} already scored are kept.`,
    );
    document.body.dataset.restarted = String(state.workerGen);
  })();
  const p = state.restarting;
  state.loading = p;
  p.finally(() => {
    if (state.restarting === p) state.restarting = null;
    if (state.loading === p) state.loading = null;
  });
}

// ---------------------------------------------------------------------------
// model sources: served checkpoints, the manifest's URLs (cached), a dropped checkpoint

/**
 * Loads a model. A run in progress is cancelled first (its results would come from the model
 * being replaced); runs started meanwhile wait for the load. `restore`: the same model again in a
 * restarted worker (settings and results stay, and no message is cleared).
 */
function loadModel(spec, { restore = false } = {}) {
  state.modelSeq += 1;
  if (restore) return loadModelNow(spec, restore); // the restart holds state.loading
  cancelRuns(`the model was changed to ${spec.label}`, { queued: false }); // queued drops get the new model
  const p = loadModelNow(spec, restore);
  state.loading = p;
  p.finally(() => {
    if (state.loading === p) state.loading = null;
  });
  return p;
}

async function loadModelNow(spec, restore) {
  setStatus(els.modelStatus, `${restore ? 'Reloading' : 'Loading'} ${spec.label}…`, 'busy');
  state.storageFailures?.clear();
  onStorage({ ok: true, file: '' });
  enableInputs(false);
  const info = restore
    ? await client.call('load', spec).catch((e) => {
        if (!state.restartFailed) showMessage(`Could not reload the model in the restarted detector: ${e?.message ?? e}`);
      })
    : await run('Could not load the model', () => client.call('load', spec));
  els.progressBox.hidden = true;
  if (!info) {
    if (state.model) {
      enableInputs(true);
      setStatus(els.modelStatus, `Still using ${state.model.label}.`, state.model.test ? 'warn' : 'ok');
    } else {
      setStatus(els.modelStatus, 'No model loaded.', 'error');
    }
    return false;
  }
  state.model = info;
  state.modelSpec = spec;
  if (!restore) {
    // The old model's references and prompt file went with it; its results stay, labelled.
    state.promptFile = null;
    state.learnedFile = null;
    if (state.refFiles) setStatus(els.refsStatus, 'No references (the model changed): drop them again.', '');
    state.refFiles = null;
    state.refsGen += 1;
  }
  showLoaded(info);
  // Which variant runs: its button is marked.
  for (const b of els.modelSources.querySelectorAll('button[data-weights]')) {
    b.setAttribute('aria-pressed', String(b.dataset.weights === spec.weightsUrl));
  }
  updateLearnedModes(info);
  document.body.dataset.model = info.label;
  const previous = els.category.value;
  els.category.replaceChildren(
    ...info.categories.map((c) => {
      const o = document.createElement('option');
      o.value = c;
      o.textContent = c;
      return o;
    }),
  );
  const want = (restore && previous) || new URLSearchParams(location.search).get('category') || previous || 'bottle';
  if (info.categories.includes(want)) els.category.value = want;
  enableInputs(true);
  updateGridNote();
  return true;
}

/** The model status line. A streamed checkpoint is usable once its image tower is in
 * (`complete` false): the rest (text tower, integrity check) follows, then onModel. */
function showLoaded(info) {
  const note = info.test
    ? ' Its scores mean nothing: use it only to try the page.'
    : info.promptFile
      ? ''
      : ' No prompt file: prompts are encoded in the page with the text tower.';
  const rest = info.complete ? '' : ' Ready for images; the rest of the checkpoint is still loading.';
  const learned = info.learned
    ? `, ${LEARNED_LABELS[info.learned.mode] ?? info.learned.mode} at ${info.learned.imageSize} px${info.learned.file ? ` from ${info.learned.file}` : ''}`
    : '';
  const text = info.hasText ? ', text tower' : info.textInFile && info.promptFile ? ', text tower loaded when a custom prompt needs it' : '';
  setStatus(
    els.modelStatus,
    `Loaded ${info.label} (${dtypeNote(info)}input ${info.imageSize} px${text}${learned}) in ${Math.round(info.ms)} ms.${rest}${note}`,
    info.test ? 'warn' : 'ok',
  );
}

/** What the model status line says of a q8 checkpoint: where its image tower runs in int8. */
function dtypeNote(info) {
  if (info.dtype !== 'q8') return '';
  return info.int8 ? 'q8: image tower in int8, ' : 'q8 weights, image tower in f32 on the GPU, ';
}

/**
 * Whether the worker kept a downloaded file of the model for offline use ({ok, file, weights,
 * bytes, reason}): while any was refused, one line says offline use is unavailable and why.
 */
function onStorage({ ok, file, weights, bytes, reason }) {
  const failed = (state.storageFailures ??= new Map());
  if (ok) failed.delete(file);
  else failed.set(file, { file, weights, bytes, reason });
  const el = $('storage-note');
  const worst = [...failed.values()].sort((a, b) => Number(b.weights) - Number(a.weights) || b.bytes - a.bytes)[0];
  el.hidden = !worst;
  el.textContent = worst
    ? `Offline use is unavailable: ${worst.weights ? `the ${formatBytes(worst.bytes)} model` : `the model's ${worst.file}`} could ` +
      `not be kept in the browser's storage (${worst.reason}). It runs now from the download; the next visit downloads it again.`
    : '';
}

/** The worker's WebAssembly memory size (its high-water mark), for measurements (tests/browser/bench.mjs). */
function noteWasmMemory(bytes) {
  if (bytes) document.body.dataset.wasmMemory = String(bytes);
}

/** The end of a streamed load: the whole checkpoint checked out, or it failed (model dropped). */
function onModel({ ok, label, hasText, ms, error, wasmMemoryBytes }) {
  noteWasmMemory(wasmMemoryBytes);
  if (!state.model || state.model.label !== label) return;
  els.progressBox.hidden = true;
  if (ok) {
    Object.assign(state.model, { complete: true, hasText, ms });
    showLoaded(state.model);
    return;
  }
  state.model = null;
  enableInputs(false);
  setStatus(els.modelStatus, 'No model loaded.', 'error');
  showMessage(`Could not load the model: ${error}`);
}

/** A models.json entry's variant `v` (variantsOf; default: the entry's only or reference file) as a load spec. */
function specFromServed(m, v = variantsOf(m)[0]) {
  return {
    label: variantLabel(m, v),
    test: !!m.test,
    configName: v.configName,
    configUrl: v.config.url,
    configSha256: v.config.sha256,
    weightsUrl: v.weights.url,
    weightsSha256: v.weights.sha256,
    promptsUrl: v.prompts?.url,
    promptsSha256: v.prompts?.sha256,
    learnedUrl: v.learned?.url,
    learnedSha256: v.learned?.sha256,
    learnedImageSize: v.learned?.imageSize,
    dtype: v.dtype ?? undefined,
  };
}

/** What each variant is, on its button. */
const DTYPE_TEXT = { q8: 'q8, faster and smaller', f16: 'f16, the reference', f32: 'f32, the reference' };

/** ?dtype=q8|f16|f32: the variant the page loads by itself (a served model's default otherwise). */
const dtypeParam = ['q8', 'f16', 'f32'].includes(pageParams.get('dtype')) ? pageParams.get('dtype') : undefined;

/**
 * The buttons of a served entry: one per variant (its dtype, download size, and which one is the
 * default here), the default first; the entry's only file: one button, as before variants.
 */
function servedButtons(m, gpu) {
  const all = variantsOf(m);
  const load = (v) => loadModel(specFromServed(m, v));
  if (all.length === 1) {
    return m.test
      ? [button(`Use the ${m.label}`, () => load(all[0]), 'test-model')]
      : [button(`Load ${m.label} (served with this site${learnedNote(m)})`, () => load(all[0]))];
  }
  const { variant: def } = chooseVariant(m, { gpu });
  const ordered = [def, ...all.filter((v) => v !== def)];
  return ordered.map((v) => {
    const what = `${DTYPE_TEXT[v.dtype] ?? v.dtype}, ${formatBytes(v.weights.size)}${v === def ? '; the default here' : ''}`;
    // The test model's other variants must not carry the reference button's name (TEST_MODEL_BUTTON).
    const text = m.test
      ? `Use the ${v === all[0] ? '' : `${v.dtype} `}${m.label} — ${what}`
      : `Load ${v.name} — ${what} (served with this site${learnedNote(v)})`;
    const b = button(text, () => load(v), m.test ? 'test-model' : '');
    b.dataset.dtype = v.dtype;
    b.dataset.variantOf = m.name;
    b.dataset.weights = v.weights.url;
    return b;
  });
}

/** The learned modes' names in the mode picker. */
const LEARNED_LABELS = { anomalyclip: 'AnomalyCLIP', adaptclip: 'AdaptCLIP' };
/** What each learned mode brings (its learned file). */
const LEARNED_WHAT = { anomalyclip: 'learned prompts', adaptclip: 'learned adapters, zero-shot or few-shot' };

/** What a served entry's learned file adds, said before anything is downloaded (or ''). */
function learnedNote(m) {
  if (!m.learned) return '';
  const name = LEARNED_LABELS[m.learned.mode] ?? m.learned.mode;
  return (
    `; with ${name} (${LEARNED_WHAT[m.learned.mode] ?? 'learned file'}, ${formatBytes(m.learned.size)}) at ${m.learned.imageSize} px: ` +
    'slow on the CPU, fast with WebGPU'
  );
}

/** Offers the loaded model's learned mode in the mode picker (and drops another model's);
 * `select`: the mode to pick when it is offered. */
function updateLearnedModes(info, select) {
  for (const o of [...els.mode.options]) if (o.dataset.learned) o.remove();
  const l = info?.learned;
  if (l) {
    const o = document.createElement('option');
    o.value = l.mode;
    o.dataset.learned = 'true';
    o.textContent = `${LEARNED_LABELS[l.mode] ?? l.mode} (${LEARNED_WHAT[l.mode] ?? 'learned file'}, ${l.imageSize} px)`;
    els.mode.append(o);
  }
  if (select && [...els.mode.options].some((o) => o.value === select)) els.mode.value = select;
  if (!els.mode.value) els.mode.value = 'fast';
  onModeChange();
}

function specFromManifest(m) {
  const config = m.files.find((f) => f.name.endsWith('.json'));
  const weights = m.files.find((f) => f.name.endsWith('.safetensors'));
  if (!config || !weights) return null;
  return {
    label: m.name,
    test: false,
    configName: config.name,
    configUrl: config.url,
    configSha256: config.sha256,
    weightsUrl: weights.url,
    weightsSha256: weights.sha256,
    size: weights.size,
  };
}

async function manifestModels() {
  try {
    const res = await fetch('weights/manifest.json');
    if (!res.ok) return [];
    return (await res.json()).models ?? [];
  } catch {
    return [];
  }
}

/** chooseVariant with ?dtype=; a model without that variant is said in the message (null). */
function chooseVariantOrSay(m, gpu) {
  try {
    return chooseVariant(m, { want: dtypeParam, gpu });
  } catch (e) {
    showMessage(`?dtype=${dtypeParam}: ${e.message}`, 'warn');
    return null;
  }
}

function button(text, onClick, cls = '') {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener('click', onClick);
  return b;
}

async function setupModelSources({ gpu = false } = {}) {
  const [served, manifest] = await Promise.all([servedModels(location.href), manifestModels()]);
  // No Cache API (some private windows, insecure origins): nothing is listed as downloaded.
  const cache = typeof caches === 'undefined' ? null : await caches.open(WEIGHTS_CACHE).catch(() => null);
  const real = served.filter((m) => !m.test);
  const test = served.filter((m) => m.test);
  const rows = [];
  let auto = null;

  for (const m of real) {
    rows.push(...servedButtons(m, gpu));
    if (!auto) {
      const pick = chooseVariantOrSay(m, gpu);
      if (pick) auto = specFromServed(m, pick.variant);
    }
  }
  for (const m of manifest) {
    const spec = specFromManifest(m);
    if (!spec || !/^[0-9a-f]{64}$/.test(spec.weightsSha256 ?? '')) continue; // unpinned files are never fetched
    const cached = cache && (await cache.match(spec.weightsUrl)) && (await cache.match(spec.configUrl));
    const host = new URL(spec.weightsUrl).host;
    const text = cached
      ? `Load ${m.name} (downloaded earlier, works offline)`
      : `Download ${m.name} from ${host}${spec.size ? ` (${formatBytes(spec.size)})` : ''}`;
    rows.push(button(text, () => loadModel(spec)));
    if (cached) auto ??= spec;
  }
  for (const m of test) {
    rows.push(...servedButtons(m, gpu));
  }
  els.modelSources.replaceChildren(...rows);
  // Why the default variant is the default (where a model offers more than one).
  const multi = served.find((m) => variantsOf(m).length > 1);
  const why = multi ? chooseVariant(multi, { gpu }).why : '';
  els.variantNote.hidden = !why;
  els.variantNote.textContent = why ? `${why} Each button says its download size.` : '';

  const wanted = new URLSearchParams(location.search).get('model');
  if (wanted) {
    // An entry's name: its default variant; a variant's own folder name (NAME-q8): that one.
    const m = served.find((s) => s.name === wanted || variantsOf(s).some((v) => v.name === wanted));
    const named = m && m.name !== wanted ? variantsOf(m).find((v) => v.name === wanted) : null;
    const pick = m && (named && !dtypeParam ? { variant: named } : chooseVariantOrSay(m, gpu));
    if (pick) auto = specFromServed(m, pick.variant);
  }
  if (auto) {
    await loadModel(auto);
  } else {
    setStatus(
      els.modelStatus,
      'No checkpoint is served with this site and none was downloaded before. To get one: run ' +
        './build.sh weights on a machine with network access and rebuild the site, download one with the ' +
        'button below (the files are sha256-checked and kept for offline use), or drop a checkpoint ' +
        '(config + .safetensors) onto the page.' +
        (test.length ? ' The interface test model only exercises the page: its scores mean nothing.' : ''),
      'warn',
    );
  }
}

async function readSafetensorsMetadata(file) {
  const head = new DataView(await file.slice(0, 8).arrayBuffer());
  if (head.byteLength < 8) return null;
  const n = Number(head.getBigUint64(0, true));
  if (n <= 0 || n > 100_000_000) return null;
  try {
    return JSON.parse(await file.slice(8, 8 + n).text()).__metadata__ ?? {};
  } catch {
    return null;
  }
}

async function loadPromptFile(file) {
  const r = await run(`Prompt file ${file.name}`, async () => {
    const res = await client.call('loadPrompts', { bytes: await file.arrayBuffer() });
    return res;
  });
  if (r) {
    state.promptFile = file;
    state.promptsGen += 1;
    setStatus(els.textStatus, `Loaded prompt file ${file.name}: ${r.categories.length} categories.`, 'ok');
  }
}

/** The tensor names of a safetensors file (from its header), or null when it is not one. */
async function safetensorsNames(file) {
  const head = new DataView(await file.slice(0, 8).arrayBuffer());
  if (head.byteLength < 8) return null;
  const n = Number(head.getBigUint64(0, true));
  if (n <= 0 || n > 100_000_000) return null;
  try {
    return Object.keys(JSON.parse(await file.slice(8, 8 + n).text())).filter((k) => k !== '__metadata__');
  } catch {
    return null;
  }
}

/** Tensors that mark a converted learned file (AnomalyCLIP's context vectors, AdaptCLIP's learners
 * and class pairs); a checkpoint has none (its names start with visual., vision_model. …). */
const LEARNED_TENSOR = /^(ctx_pos|ctx_neg|adaptclip\..+|(textual|visual|pq)_learner\..+)$/;

/**
 * Dropped or picked files that are a learned file for the loaded model: {file, side} (side: its
 * learned.json, {"imageSize": N}), or null. An official .pth is taken too (wasm reads it, computing
 * its text features or class pairs with the text tower).
 */
async function learnedFiles(files) {
  const side = files.find((f) => /learned.*\.json$/i.test(f.name));
  const rest = files.filter((f) => f !== side);
  if (rest.length !== 1) return null;
  const [file] = rest;
  if (/\.(pth|pt)$/i.test(file.name)) return { file, side };
  if (!file.name.endsWith('.safetensors')) return null;
  const names = await safetensorsNames(file);
  return names?.some((n) => LEARNED_TENSOR.test(n)) ? { file, side } : null;
}

/**
 * Loads a learned file for the loaded model (AnomalyCLIP's prompts or AdaptCLIP's adapters, as
 * `anoscope convert --learned` writes them, or the official .pth) and offers its mode. Runs
 * dropped meanwhile wait for it, as for a model load. The worker checks it against
 * the model; a wrong file is refused with the reason, and the model, its learned mode and the
 * results stay.
 */
async function loadLearnedFile({ file, side }) {
  if (!needModel()) return;
  while (state.loading) await state.loading.catch(() => {});
  if (!needModel()) return;
  let imageSize;
  if (side) {
    const j = await side
      .text()
      .then((t) => JSON.parse(t))
      .catch(() => null);
    imageSize = Number(j?.imageSize);
    if (!Number.isInteger(imageSize) || imageSize < 1 || imageSize > 4096) {
      showMessage(`Learned file ${file.name}: ${side.name} must be {"imageSize": N} with N a whole number of pixels from 1 to 4096. Nothing was changed.`);
      return;
    }
  }
  const model = state.model;
  setStatus(els.modelStatus, `Loading the learned file ${file.name}…`, 'busy');
  const p = run(`Learned file ${file.name} (nothing was changed)`, async () =>
    client.call('loadLearned', { bytes: await file.arrayBuffer(), imageSize, name: file.name }),
  );
  state.loading = p;
  const r = await p;
  if (state.loading === p) state.loading = null;
  if (state.model !== model) return; // another model was loaded meanwhile: the file went with the old one
  showLoaded(model);
  if (!r) return;
  state.learnedFile = { file, imageSize };
  state.learnedGen += 1;
  state.model.learned = { ...r.learned, file: file.name };
  updateLearnedModes(state.model, r.learned.mode);
  showLoaded(state.model);
  updateGridNote();
}

async function handleCheckpointFiles(files) {
  const learned = await learnedFiles(files);
  if (learned) return loadLearnedFile(learned);
  const configs = files.filter((f) => f.name.endsWith('.json'));
  const tensors = files.filter((f) => f.name.endsWith('.safetensors'));
  if (tensors.length === 1 && configs.length === 0) {
    const meta = await readSafetensorsMetadata(tensors[0]);
    if (meta && 'anoscope_prompts' in meta) return loadPromptFile(tensors[0]);
  }
  const config = configs.find((f) => /^(open_clip_)?config\.json$/.test(f.name)) ?? configs[0];
  const weights = tensors.find((f) => !/prompts/.test(f.name)) ?? tensors[0];
  if (!config || !weights) {
    showMessage(
      'A checkpoint needs two files dropped or picked together: its config (config.json or open_clip_config.json) ' +
        'and its .safetensors weights.',
    );
    return;
  }
  const max = state.limits?.maxCheckpointBytes ?? Infinity;
  if (weights.size > max) {
    showMessage(`${weights.name} is ${weights.size} bytes; the page accepts checkpoints of at most ${max} bytes.`);
    return;
  }
  await loadModel({
    label: `${weights.name} (from your disk)`,
    test: false,
    configName: /^open_clip_config\.json$/.test(config.name) ? 'open_clip_config.json' : 'config.json',
    configText: await config.text(),
    // Read in slices by the worker as it loads (never copied whole).
    weightsFile: weights,
  });
}

// ---------------------------------------------------------------------------
// scoring and drawing

function textSpec() {
  const defects = els.defects.value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const object = els.object.value.trim();
  return {
    category: els.category.value || 'object',
    object: object || undefined,
    descriptions: defects.length > 0,
    defects: defects.length ? defects : undefined,
  };
}

function threshold() {
  return Number(els.threshold.value);
}

function describeVerdict(r) {
  const t = threshold();
  const v = verdict(r.score, t);
  const plain =
    v === 'anomalous'
      ? 'likely defective: parts of the image look unlike a normal example'
      : 'looks normal at this threshold';
  return { v, text: `${r.name ? `${r.name}: ` : ''}score ${r.score.toFixed(3)} — ${v} at threshold ${t.toFixed(2)} (${plain}).` };
}

/** What the worker needs to draw a kept result again (setCurrent). */
function currentSpec(r) {
  return { map: r.map, width: r.width, height: r.height, sourceWidth: r.sourceWidth, sourceHeight: r.sourceHeight, photo: r.photo };
}

/** The photo of a result as drawable pixels: the dropped file, the webcam frame, else the
 * model's input (a format the browser cannot decode but the detector can). */
async function photoBitmap(r) {
  if (r.frame) return createImageBitmap(r.frame);
  if (r.file) {
    try {
      return await createImageBitmap(r.file);
    } catch {
      // falls through to the input picture
    }
  }
  if (r.input) return createImageBitmap(new ImageData(new Uint8ClampedArray(r.input), r.width, r.height));
  return null;
}

/** Draws the photo under the heat layer at the layer's (photo or bounded) size. */
async function drawPhoto(r, width, height) {
  const bmp = await photoBitmap(r);
  if (state.current !== r) return bmp?.close();
  view.drawPhoto(bmp, width, height);
  bmp?.close();
  r.drawnAt = `${width}x${height}`;
  const sw = r.sourceWidth ?? width;
  const sh = r.sourceHeight ?? height;
  const bounded = width !== sw || height !== sh;
  const tiles = r.tiles
    ? r.tiles.count > 1
      ? ` Tiled inspection: ${r.tiles.count} tiles (${r.tiles.rows}×${r.tiles.cols}) and the whole photo, ${Math.round(r.ms)} ms; ` +
        `score = ½ (whole ${r.tiles.wholeScore.toFixed(3)} + best tile ${Math.max(...r.tiles.tileScores).toFixed(3)}).`
      : ` Tiles: none needed (the photo is at most twice the model input), ${Math.round(r.ms)} ms.`
    : '';
  els.photoNote.textContent =
    (bounded
      ? `Photo ${sw}×${sh} px, shown as a bounded copy of ${width}×${height} px (long side at most 4096 px); the map and regions are at that size.`
      : `Photo ${sw}×${sh} px, shown at its own size and aspect; the map is resampled onto it.`) + tiles;
  els.photo.dataset.photoWidth = String(sw);
  els.photo.dataset.photoHeight = String(sh);
  els.resultView.dataset.tiles = String(r.tiles?.count ?? 0);
}

let overlayPending = false;
let overlayAgain = false;
async function redraw() {
  if (!state.current) return;
  if (overlayPending) {
    overlayAgain = true;
    return;
  }
  overlayPending = true;
  try {
    do {
      overlayAgain = false;
      const r = state.current;
      const t = threshold();
      const o = await client.call('overlay', { threshold: t });
      if (state.current !== r) {
        overlayAgain = true;
        continue;
      }
      if (r.drawnAt !== `${o.width}x${o.height}`) await drawPhoto(r, o.width, o.height);
      view.drawLayer(o.rgba, o.width, o.height);
      r.regions = { threshold: t, width: o.width, height: o.height, list: o.regions };
      view.drawRegions(r.regions);
    } while (overlayAgain);
  } catch (e) {
    if (!state.restarting) showMessage(`Could not draw the overlay: ${e?.message ?? e}`);
  } finally {
    overlayPending = false;
  }
  view.setOpacity(Number(els.opacity.value));
  showVerdict();
}

// The photo view (photo-view.js, shared with <anomaly-detector>): zoom, pan, pinch, the view
// toggle, the opacity slider, region boxes and list.
const view = new PhotoView({ ...els, viewRadios: Array.from(document.querySelectorAll('input[name="view"]')) });

function showVerdict() {
  const { v, text } = describeVerdict(state.current);
  const regs = state.current.regions?.list ?? [];
  const li = largestRegion(regs);
  const where = li >= 0
    ? ` Largest region: #${li + 1} at x ${regs[li].bbox[0]}, y ${regs[li].bbox[1]} (${regs[li].bbox[2]}×${regs[li].bbox[3]} px, ${regs[li].area_pct.toFixed(2)} % of the photo).`
    : '';
  setStatus(els.verdict, text + where, v === 'anomalous' ? 'bad' : 'ok');
  els.overlay.setAttribute('aria-label', `Anomaly heatmap over the image. ${text}`);
  els.overlay.dataset.score = String(state.current.score);
  els.exportPng.disabled = false;
  els.exportJson.disabled = false;
  els.exportCsv.disabled = false;
}

async function show(result, t0) {
  state.current = result;
  result.drawnAt = null;
  await redraw();
  const ms = performance.now() - t0;
  document.dispatchEvent(
    new CustomEvent('anoscope:drawn', {
      // photoMap: the map on the photo as drawn (stitched, for a tiled run), when the result keeps it.
      detail: {
        ms,
        score: result.score,
        name: result.name,
        map: result.map,
        photoWidth: result.sourceWidth,
        photoHeight: result.sourceHeight,
        tiles: result.tiles?.count ?? 0,
        tileRects: result.tiles?.rects,
        photoMap: result.photo ? { map: result.photo.map, width: result.photo.width, height: result.photo.height } : undefined,
      },
    }),
  );
}

function needModel() {
  if (!state.model) {
    showMessage('Load a model first (section 1): a served checkpoint, a download, your own files, or the interface test model.');
    return false;
  }
  return true;
}

async function fileItem(f) {
  return { name: f.name || 'pasted image', bytes: await f.arrayBuffer() };
}

function scoreFiles(files, t0 = performance.now()) {
  if (!state.loading && !needModel()) return;
  if (files.length === 0) return;
  const what = files.length === 1 ? `image ${files[0].name || 'pasted image'}` : `${files.length} images`;
  return startRun(what, async (run) => {
    run.count = files.length;
    if (!needModel()) return;
    const mode = els.mode.value;
    clearMessage();
    if (mode === 'batch') return scoreBatch(files, t0, run);
    return scoreEach(files, t0, run, mode);
  });
}

/** Why a run stopped early (cancelled, or its settings changed), or ''. */
function stopReason(run, stamp) {
  if (run.cancelled) return run.cancelled;
  if (stamp !== settingsStamp(els.mode.value)) return `the settings changed (now ${settingsOf(els.mode.value).text})`;
  return '';
}

/** Fast, WinCLIP and few-shot: one image at a time, so a run can stop between images. */
async function scoreEach(files, t0, run, mode) {
  const problems = [];
  const done = [];
  const settings = settingsOf(mode);
  const stamp = settingsStamp(mode);
  let stopped = '';
  let discarded = 0;
  for (const [i, f] of files.entries()) {
    stopped = stopReason(run, stamp);
    if (stopped) break;
    setStatus(els.imageStatus, `Scoring ${f.name || 'image'} (${i + 1} of ${files.length}, ${mode})…`, 'busy');
    try {
      // Tiles: single images only (a run of many keeps one pass per image).
      const tiles = files.length === 1 ? els.tiles.value : 'off';
      const r = await client.call('detect', { mode, file: await fileItem(f), text: textSpec(), tiles });
      noteWasmMemory(r.wasmMemoryBytes);
      r.name = f.name || 'pasted image';
      r.settings = { ...settings.fields, tiles };
      r.file = f;
      if (files.length > 1 && !r.tiles) r.photo = undefined; // recomputed from the map when opened
      // Computed under settings that are no longer the page's: never drawn. Nor after a cancel.
      if (stamp !== settingsStamp(els.mode.value)) {
        discarded += 1;
        continue;
      }
      if (run.cancelled) continue;
      done.push(r);
      await show(r, t0);
    } catch (e) {
      if (state.restarting || run.cancelled || /^cancelled$/.test(e?.message)) continue;
      problems.push(`${f.name || 'image'}: ${e?.message ?? e}`);
    }
  }
  stopped ||= stopReason(run, stamp);
  els.progressBox.hidden = true;
  if (problems.length) showMessage(`Could not score ${problems.length === 1 ? 'this file' : 'these files'}:\n${problems.join('\n')}`);
  const note = discarded ? ` The result computed under the old settings was discarded.` : '';
  if (stopped && !state.restarting) {
    setStatus(
      els.imageStatus,
      `Stopped (${stopped}): scored ${done.length} of ${files.length} image${files.length === 1 ? '' : 's'} (${mode}).${note}` +
        (done.length < files.length ? ' Drop the rest again to score them.' : ''),
      'warn',
    );
  } else if (state.restarting) {
    const why = state.crash?.oom ? 'ran out of memory' : 'crashed';
    setStatus(els.imageStatus, `Stopped: the detector ${why} after ${done.length} of ${files.length} image(s).`, 'error');
  } else {
    setStatus(
      els.imageStatus,
      `Scored ${done.length} of ${files.length} image${files.length === 1 ? '' : 's'} (${mode}).${takeFolderNote()}`,
      done.length ? 'ok' : 'error',
    );
  }
  if (files.length > 1 && done.length) {
    state.results = done;
    await fillGrid(
      done,
      async (r) => {
        await client.call('setCurrent', currentSpec(r));
        await show(r, performance.now());
      },
      { stamp, mode, text: settings.text },
    );
  } else if (done.length) {
    state.results = done;
    els.gridBox.hidden = true;
  }
}

async function scoreBatch(files, t0, run) {
  const max = state.limits?.maxBatch ?? Infinity;
  if (files.length < 2 || files.length > max) {
    showMessage(`Batch mode scores 2 to ${max} images together (MuSc); you gave ${files.length}.`);
    return;
  }
  const settings = settingsOf('batch');
  const stamp = settingsStamp('batch');
  setStatus(els.imageStatus, `MuSc over ${files.length} images…`, 'busy');
  const items = await Promise.all(files.map(fileItem));
  let failure = null;
  const res = await client.call('batch', { files: items }).catch((e) => {
    failure = e;
  });
  els.progressBox.hidden = true;
  const stopped = !state.restarting && stopReason(run, stamp);
  if (state.restarting) {
    const why = state.crash?.oom ? 'ran out of memory' : 'crashed';
    setStatus(els.imageStatus, `Batch not scored: the detector ${why}. The earlier results are kept.`, 'error');
    return;
  }
  if (stopped) {
    // MuSc scores the images against each other: a stopped batch has no partial results.
    showMessage(`Batch cancelled (${stopped}): nothing of it was scored. The earlier results are kept.`, 'warn');
    setStatus(els.imageStatus, `Batch cancelled (${stopped}).`, 'warn');
    return;
  }
  if (failure) {
    showMessage(`Batch failed: ${failure?.message ?? failure}`);
    setStatus(els.imageStatus, 'Batch not scored.', 'error');
    return;
  }
  setStatus(els.imageStatus, `Scored ${res.items.length} images with MuSc in ${Math.round(res.ms)} ms.${takeFolderNote()}`, 'ok');
  const gen = state.workerGen;
  const list = res.items.map((it, i) => ({ ...it, batchIndex: i, settings: settings.fields, file: files[i] }));
  state.results = list;
  const open = async (r) => {
    if (state.workerGen !== gen || state.results !== list) {
      // The worker's copy of this batch is gone (restarted, or a newer run): the kept map.
      await client.call('setCurrent', currentSpec(r));
      await show(r, performance.now());
      return;
    }
    const d = await client.call('batchOpen', { index: r.batchIndex, name: r.name });
    d.name = r.name;
    d.settings = r.settings;
    d.file = r.file;
    await show(d, performance.now());
  };
  await fillGrid(list, open, { stamp, mode: 'batch', text: settings.text });
  const top = [...list].sort((a, b) => b.score - a.score)[0];
  const d = await client.call('batchOpen', { index: top.batchIndex, name: top.name });
  d.name = top.name;
  d.settings = top.settings;
  d.file = top.file;
  await show(d, t0);
}

const THUMB_SIDE = 192;

/** An empty thumbnail canvas at the result's photo aspect (long side THUMB_SIDE px). */
function thumbCanvas(r) {
  const sw = r.sourceWidth || r.width;
  const sh = r.sourceHeight || r.height;
  const k = THUMB_SIDE / Math.max(sw, sh);
  const c = document.createElement('canvas');
  c.width = Math.max(1, Math.round(sw * k));
  c.height = Math.max(1, Math.round(sh * k));
  return c;
}

/** Draws a result's thumbnail into `c`: the photo (decoded at the canvas size; the model's input
 * resampled when the browser cannot decode it) under its heat map resampled onto the same size
 * (the worker's photoMap), at opacity 0.5. Sets data-thumb="WxH" when done. */
async function drawThumbnail(c, r) {
  const tw = c.width;
  const th = c.height;
  const ctx = c.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  let bmp = null;
  if (r.file) bmp = await createImageBitmap(r.file, { resizeWidth: tw, resizeHeight: th, resizeQuality: 'high' }).catch(() => null);
  if (!bmp && r.input) bmp = await createImageBitmap(new ImageData(new Uint8ClampedArray(r.input), r.width, r.height));
  if (bmp) {
    ctx.drawImage(bmp, 0, 0, tw, th);
    bmp.close();
  }
  const heat = await client.call('thumb', { map: r.map, width: r.width, height: r.height, thumbWidth: tw, thumbHeight: th });
  const layer = await createImageBitmap(new ImageData(new Uint8ClampedArray(heat.rgba.buffer), heat.width, heat.height));
  ctx.globalAlpha = 0.5;
  ctx.drawImage(layer, 0, 0);
  layer.close();
  c.dataset.thumb = `${tw}x${th}`;
}

/** Fills the grid with a run's results; `computed`: {stamp, mode, text}, the settings they were scored with. */
async function fillGrid(list, open, computed) {
  const sorted = [...list].sort((a, b) => b.score - a.score);
  const rows = [];
  const thumbs = [];
  for (const r of sorted) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    const c = thumbCanvas(r);
    c.setAttribute('aria-hidden', 'true');
    thumbs.push([c, r]);
    const label = document.createElement('span');
    label.className = 'grid-label';
    const v = verdict(r.score, threshold());
    label.textContent = `${r.name}: ${r.score.toFixed(3)} (${v})`;
    b.append(c, label);
    b.dataset.score = String(r.score);
    b.addEventListener('click', () => open(r));
    li.append(b);
    rows.push(li);
  }
  els.grid.replaceChildren(...rows);
  els.gridBox.hidden = false;
  state.gridStamp = computed;
  updateGridNote();
  // The grid is usable at once; its thumbnails are drawn after it, one at a time, in the
  // background (a newer grid stops an older one's).
  (async () => {
    for (const [c, r] of thumbs) {
      if (els.grid.firstChild !== rows[0]) return;
      try {
        await drawThumbnail(c, r);
      } catch (e) {
        if (!state.restarting) console.warn(`thumbnail of ${r.name}: ${e?.message ?? e}`);
      }
    }
  })();
}

// ---------------------------------------------------------------------------
// inputs: drop (files and folders), paste, picker, webcam

async function filesFromDataTransfer(dt) {
  const entries = [];
  for (const item of dt.items ?? []) {
    if (item.kind !== 'file') continue;
    const entry = item.webkitGetAsEntry?.();
    entries.push(entry ? { entry } : { file: item.getAsFile() });
  }
  if (entries.length === 0) return Array.from(dt.files ?? []);
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      out.push(await new Promise((res, rej) => entry.file(res, rej)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (batch.length === 0) break;
        for (const e of batch) await walk(e);
      }
    }
  };
  let folder = false;
  for (const e of entries) {
    if (e.file) out.push(e.file);
    else {
      folder ||= e.entry.isDirectory;
      await walk(e.entry);
    }
  }
  return folder ? imagesOfFolder(out) : out;
}

function takeFolderNote() {
  const note = state.folderNote ?? '';
  state.folderNote = '';
  return note;
}

const IMAGE_NAME = /\.(png|jpe?g|webp|bmp|gif|tiff?)$/i;

/** The image files of a folder, by name; says how many other files were left out. */
function imagesOfFolder(files) {
  const images = files.filter((f) => IMAGE_NAME.test(f.name) && !f.name.startsWith('.'));
  const skipped = files.length - images.length;
  state.folderNote = skipped ? ` Left out ${skipped} file(s) of the folder that are not images.` : '';
  return images.sort((a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name));
}

async function routeFiles(files, t0) {
  if (files.some((f) => /\.(safetensors|json|pth|pt)$/i.test(f.name))) return handleCheckpointFiles(files);
  return scoreFiles(files, t0);
}

document.addEventListener('dragover', (ev) => {
  ev.preventDefault();
  document.body.classList.add('dragging');
});
document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
document.addEventListener('drop', async (ev) => {
  ev.preventDefault();
  document.body.classList.remove('dragging');
  const t0 = performance.now();
  const files = await filesFromDataTransfer(ev.dataTransfer);
  await routeFiles(files, t0);
});

els.refsDrop.addEventListener('drop', async (ev) => {
  ev.preventDefault();
  ev.stopPropagation();
  await setReferences(await filesFromDataTransfer(ev.dataTransfer));
});
els.refsDrop.addEventListener('dragover', (ev) => ev.preventDefault());
els.refsFiles.addEventListener('change', async () => {
  await setReferences(Array.from(els.refsFiles.files));
  els.refsFiles.value = '';
});
els.refsClear.addEventListener('click', async () => {
  await run('Could not clear', () => client.call('clearReferences'));
  state.refFiles = null;
  state.refsGen += 1;
  updateGridNote();
  setStatus(els.refsStatus, 'No references.', '');
});

async function setReferences(files) {
  if (!needModel() || files.length === 0) return;
  setStatus(els.refsStatus, `Embedding ${files.length} reference image(s)…`, 'busy');
  const items = await Promise.all(files.map(fileItem));
  const r = await run('Reference images', () => client.call('references', { files: items, mode: els.mode.value }));
  if (r) {
    state.refFiles = files;
    state.refsGen += 1;
    updateGridNote();
    setStatus(els.refsStatus, `${r.count} normal reference image(s) embedded.`, 'ok');
  } else setStatus(els.refsStatus, 'References unchanged.', 'error');
}

document.addEventListener('paste', async (ev) => {
  const files = Array.from(ev.clipboardData?.files ?? []);
  if (files.length === 0) return;
  ev.preventDefault();
  await routeFiles(files, performance.now());
});

els.imageFiles.addEventListener('change', async () => {
  const files = Array.from(els.imageFiles.files);
  els.imageFiles.value = '';
  await routeFiles(files, performance.now());
});
els.folderFiles.addEventListener('change', async () => {
  const files = imagesOfFolder(Array.from(els.folderFiles.files));
  els.folderFiles.value = '';
  await scoreFiles(files, performance.now());
});
els.modelFiles.addEventListener('change', async () => {
  const files = Array.from(els.modelFiles.files);
  els.modelFiles.value = '';
  await handleCheckpointFiles(files);
});
els.learnedFile.addEventListener('change', async () => {
  const files = Array.from(els.learnedFile.files);
  els.learnedFile.value = '';
  const learned = await learnedFiles(files);
  if (learned) await loadLearnedFile(learned);
  else showMessage(`${files.map((f) => f.name).join(', ')}: not a learned file (anoscope convert --learned FILE.pth --model DIR writes one), with its learned.json at most.`);
});
els.promptFile.addEventListener('change', async () => {
  const [f] = els.promptFile.files;
  els.promptFile.value = '';
  if (f) await loadPromptFile(f);
});
for (const zone of [els.drop, els.refsDrop]) {
  zone.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      (zone === els.drop ? els.imageFiles : els.refsFiles).click();
    }
  });
}

// Webcam: frames go to the worker one at a time (fast mode), as fast as it keeps up.
async function startWebcam() {
  if (!needModel()) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } } });
  } catch (e) {
    const why =
      e?.name === 'NotAllowedError'
        ? 'camera permission was refused. Allow the camera for this page in the browser’s site settings, then press Start webcam again.'
        : e?.name === 'NotFoundError'
          ? 'no camera was found.'
          : `${e?.message ?? e}`;
    showMessage(`Webcam: ${why}`);
    setStatus(els.webcamStatus, 'Webcam off.', '');
    return;
  }
  els.video.srcObject = stream;
  els.video.hidden = false; // a small live preview; the scored frame is drawn in section 4
  await els.video.play().catch(() => {});
  const wc = { stream, frames: 0, t0: performance.now(), running: true };
  state.webcam = wc;
  els.webcam.textContent = 'Stop webcam';
  els.webcam.setAttribute('aria-pressed', 'true');
  const grab = new OffscreenCanvas(1, 1);
  const ctx = grab.getContext('2d', { willReadFrequently: true });
  while (wc.running) {
    const vw = els.video.videoWidth;
    const vh = els.video.videoHeight;
    if (!vw || !vh) {
      await new Promise((r) => setTimeout(r, 30));
      continue;
    }
    const s = Math.min(1, 320 / Math.max(vw, vh));
    grab.width = Math.round(vw * s);
    grab.height = Math.round(vh * s);
    ctx.drawImage(els.video, 0, 0, grab.width, grab.height);
    const frame = ctx.getImageData(0, 0, grab.width, grab.height);
    const data = new Uint8ClampedArray(frame.data); // a copy goes to the worker; `frame` is drawn
    const t = performance.now();
    const stamp = settingsStamp('fast');
    try {
      wc.inFlight = true;
      const r = await client.call(
        'detect',
        { mode: 'fast', rgba: { data: data.buffer, width: grab.width, height: grab.height }, text: textSpec() },
        [data.buffer],
      );
      wc.inFlight = false;
      if (!wc.running) break; // stopped mid-pass: the frame's result is discarded
      if (stamp !== settingsStamp('fast')) continue; // the prompts changed meanwhile: not drawn
      r.name = 'webcam';
      r.settings = settingsOf('fast').fields;
      r.frame = frame;
      await show(r, t);
      if (!wc.running) break;
      wc.frames += 1;
      const fps = wc.frames / ((performance.now() - wc.t0) / 1000);
      setStatus(els.webcamStatus, `Webcam on: ${wc.frames} frames scored, ${fps.toFixed(1)} fps (fast mode).`, 'ok');
      els.webcamStatus.dataset.fps = fps.toFixed(2);
      els.webcamStatus.dataset.frames = String(wc.frames);
    } catch (e) {
      wc.inFlight = false;
      if (!wc.running || /^cancelled$/.test(e?.message)) continue;
      if (state.restarting) {
        stopWebcam(' (the detector was restarted)');
        break;
      }
      showMessage(`Webcam frame: ${e?.message ?? e}`);
      stopWebcam();
    }
  }
}

function stopWebcam(reason = '') {
  const wc = state.webcam;
  if (!wc) return;
  wc.running = false;
  for (const t of wc.stream.getTracks()) t.stop();
  els.video.srcObject = null;
  els.video.hidden = true;
  state.webcam = null;
  els.webcam.textContent = 'Start webcam';
  els.webcam.setAttribute('aria-pressed', 'false');
  const dropped = wc.inFlight ? ' The frame being scored when it stopped was discarded.' : '';
  setStatus(els.webcamStatus, `Webcam off${reason}. ${wc.frames} frames were scored.${dropped}`, '');
  els.webcamStatus.dataset.live = 'false';
}

els.webcam.addEventListener('click', () => (state.webcam ? stopWebcam() : startWebcam()));
document.addEventListener('visibilitychange', () => {
  if (document.hidden) stopWebcam(' (the tab was hidden)');
});

// ---------------------------------------------------------------------------
// settings, prompts, export

const MODE_NOTES = {
  fast: 'One pass through the image tower (CLIP Surgery value-value tokens). Fast; coarser maps.',
  winclip: 'WinCLIP runs the image tower on many windows per image: more accurate, and heavy on the CPU (seconds per image on ViT-B/16).',
  fewshot: 'WinCLIP+ compares each image with the normal reference images you drop into the tray below.',
  batch: 'Drop a folder or several images: MuSc scores them against each other, no prompts needed. Results are listed most anomalous first.',
};
function onModeChange() {
  const m = els.mode.value;
  const learned = state.model?.learned?.mode === m ? state.model.learned : null;
  els.modeNote.textContent = learned
    ? `${LEARNED_LABELS[m] ?? m} scores with this model's ${LEARNED_WHAT[m] ?? 'learned file'} (no category prompts), on the image ` +
      `resized to ${learned.imageSize} px: slow on the CPU (one pass through the whole image tower at that size), ` +
      'fast with WebGPU. Tiles (auto) add one such pass per tile.' +
      (m === 'adaptclip' ? ' Normal reference images in the tray below make it few-shot (its prompt-query adapter, on the CPU).' : '')
    : MODE_NOTES[m];
  els.modeNote.className = m === 'winclip' || (learned && els.backend.dataset.gpu !== 'true') ? 'note warn' : 'note';
  // Few-shot AdaptCLIP takes the same tray (without references it is zero-shot).
  els.refsBox.hidden = m !== 'fewshot' && !(learned && m === 'adaptclip');
}
els.mode.addEventListener('change', onModeChange);
onModeChange();

els.encode.addEventListener('click', async () => {
  if (!needModel()) return;
  const spec = textSpec();
  setStatus(els.textStatus, 'Encoding prompts…', 'busy');
  const t0 = performance.now();
  const r = await run('Custom prompts', () => client.call('text', spec));
  els.progressBox.hidden = true;
  if (!r) {
    setStatus(els.textStatus, 'Prompts not encoded.', 'error');
    return;
  }
  const what = spec.object || spec.defects ? `custom prompts for “${spec.object ?? spec.category}”` : `prompts for ${spec.category}`;
  setStatus(els.textStatus, `Encoded ${what} in ${Math.round(performance.now() - t0)} ms.`, 'ok');
  els.textStatus.dataset.encoded = spec.object ?? spec.category;
});

els.threshold.addEventListener('input', () => {
  els.thresholdValue.textContent = threshold().toFixed(2);
  redraw();
});

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
/** The photo with the heat layer at the slider's opacity (and the threshold outline). */
els.exportPng.addEventListener('click', () => {
  const c = document.createElement('canvas');
  c.width = els.photo.width;
  c.height = els.photo.height;
  const ctx = c.getContext('2d');
  ctx.drawImage(els.photo, 0, 0);
  ctx.globalAlpha = Number(els.opacity.value);
  ctx.drawImage(els.overlay, 0, 0);
  c.toBlob((b) => b && download(b, 'anoscope-overlay.png'), 'image/png');
});

/** Every result of the run (or the one shown) with its regions at the page's threshold. */
async function exportRows() {
  const t = threshold();
  const list = state.results.length ? state.results : state.current ? [state.current] : [];
  const out = [];
  for (const r of [...list].sort((a, b) => b.score - a.score)) {
    let regs = r.regions?.threshold === t ? r.regions : null;
    if (!regs && r.map) regs = await client.call('regionsFor', { ...currentSpec(r), threshold: t });
    out.push({ r, regs });
  }
  return { t, out };
}

els.exportJson.addEventListener('click', async () => {
  const { t, out } = await exportRows();
  const json = {
    model: state.model?.label,
    testModel: !!state.model?.test,
    mode: els.mode.value,
    category: els.category.value,
    threshold: t,
    results: out.map(({ r, regs }) => ({
      name: r.name,
      score: r.score,
      verdict: verdict(r.score, t),
      width: r.sourceWidth,
      height: r.sourceHeight,
      // The regions' coordinates are pixels of the map as shown (the photo, or its bounded copy).
      regionsWidth: regs?.width,
      regionsHeight: regs?.height,
      regions: regs?.list ?? [],
      tiles: r.tiles
        ? { count: r.tiles.count, rows: r.tiles.rows, cols: r.tiles.cols, rects: r.tiles.rects, wholeScore: r.tiles.wholeScore, tileScores: r.tiles.tileScores }
        : undefined,
      computedWith: r.settings,
    })),
  };
  download(new Blob([JSON.stringify(json, null, 2)], { type: 'application/json' }), 'anoscope-scores.json');
});

const csvCell = (v) => (v === undefined || v === null ? '' : /[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));

/** One CSV of every image's score and regions (one row per region; an image without any: one row). */
els.exportCsv.addEventListener('click', async () => {
  const { t, out } = await exportRows();
  const head = ['name', 'score', 'verdict', 'threshold', 'width', 'height', 'region', 'x', 'y', 'w', 'h', 'area_px', 'area_pct', 'peak', 'mean'];
  const rows = [head];
  for (const { r, regs } of out) {
    const base = [r.name, r.score, verdict(r.score, t), t, r.sourceWidth, r.sourceHeight];
    const list = regs?.list ?? [];
    if (!list.length) rows.push([...base, '', '', '', '', '', '', '', '', '']);
    list.forEach((g, i) => rows.push([...base, i + 1, ...g.bbox, g.area_px, g.area_pct, g.peak, g.mean]));
  }
  const text = rows.map((row) => row.map(csvCell).join(',')).join('\n') + '\n';
  download(new Blob([text], { type: 'text/csv' }), 'anoscope-scores.csv');
});

// ---------------------------------------------------------------------------
// start

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('./sw.js').catch((e) => console.warn(`offline cache unavailable: ${e.message}`));
}

client.ready.then(
  async (info) => {
    state.limits = info.limits;
    showBackend(info.backend);
    if (info.backend.failure) {
      showMessage(`${info.backend.failure}. Running on the CPU (WebAssembly) instead.`, 'warn');
    }
    setStatus(els.engine, `Detector ready (anoscope ${info.version}, build ${info.buildId}).`, 'ok');
    // Which version runs (the tests read these): the build id and the wasm's sha256.
    document.body.dataset.build = info.buildId;
    document.body.dataset.wasmSha256 = info.wasmSha256;
    document.body.dataset.wasmUrl = info.wasmUrl;
    document.body.dataset.relaxedDotSaturates = String(info.relaxedDotSaturates);
    els.modelFiles.disabled = false;
    await setupModelSources({ gpu: !!info.backend.gpuWanted });
    document.body.dataset.ready = 'true';
  },
  () => {},
);
