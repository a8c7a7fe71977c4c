// Webcam: Chromium's fake camera (--use-fake-device-for-media-stream); frames are scored in
// fast mode at the rate the worker sustains, fps is shown, and toggling off stops the stream.
// A refused camera permission gives a clear message and the page keeps working.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { browser, dropAndWait, image, loadTestModel, makeSite, message, openPage, ready, serve } from './harness.mjs';

let server;

before(async () => {
  server = await serve(makeSite());
});

after(() => server?.stop());

test('webcam frames are scored, fps > 0, and the stream stops when toggled off', { timeout: 90_000 }, async () => {
  const b = await browser({ fakeMedia: true });
  try {
    const { page, problems } = await openPage(b.context, server.url);
    await ready(page);
    // The service worker's first install fetches the shell: done before requests are counted.
    await page.evaluate(() => navigator.serviceWorker.ready);
    await loadTestModel(page);
    const s0 = server.log.length;
    await page.click('#webcam');
    await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 5, null, {
      timeout: 60_000,
    });
    const fps = Number(await page.getAttribute('#webcam-status', 'data-fps'));
    assert.ok(fps > 0, `fps ${fps}`);
    assert.match(await page.textContent('#webcam-status'), /Webcam on: \d+ frames scored, [\d.]+ fps/);
    assert.equal(await page.getAttribute('#webcam', 'aria-pressed'), 'true');
    const live = await page.evaluate(() => document.getElementById('video').srcObject.getVideoTracks()[0].readyState);
    assert.equal(live, 'live');
    // The overlay is on the frame at the camera's aspect (the scored frame: long side 320 px).
    const cam = await page.evaluate(() => {
      const v = document.getElementById('video');
      const p = document.getElementById('photo');
      const o = document.getElementById('overlay');
      const pb = p.getBoundingClientRect();
      const ob = o.getBoundingClientRect();
      return {
        video: [v.videoWidth, v.videoHeight],
        photo: [p.width, p.height],
        overlay: [o.width, o.height],
        shown: [pb.width, pb.height],
        layerShown: [ob.width, ob.height],
      };
    });
    assert.deepEqual(cam.overlay, cam.photo);
    assert.notEqual(cam.video[0], cam.video[1], 'the fake camera is not square');
    // On screen too: the frame and its layer keep the camera's aspect, the layer over the frame.
    assert.ok(Math.abs(cam.shown[0] / cam.shown[1] - cam.video[0] / cam.video[1]) < 0.01, JSON.stringify(cam));
    assert.ok(Math.abs(cam.layerShown[0] - cam.shown[0]) < 1 && Math.abs(cam.layerShown[1] - cam.shown[1]) < 1, JSON.stringify(cam));
    assert.equal(Math.max(...cam.photo), Math.min(320, Math.max(...cam.video)));
    assert.ok(Math.abs(cam.photo[0] / cam.photo[1] - cam.video[0] / cam.video[1]) < 0.01, JSON.stringify(cam));
    // Keep a handle on the track to see that it ends.
    await page.evaluate(() => {
      window.__track = document.getElementById('video').srcObject.getVideoTracks()[0];
    });
    await page.click('#webcam');
    assert.equal(await page.evaluate(() => window.__track.readyState), 'ended');
    assert.equal(await page.evaluate(() => document.getElementById('video').srcObject), null);
    assert.match(await page.textContent('#webcam-status'), /Webcam off\. \d+ frames were scored/);
    assert.deepEqual(server.log.slice(s0), [], 'webcam scoring made requests to the server');
    // Hiding the tab stops the stream too.
    await page.click('#webcam');
    await page.waitForFunction(() => document.getElementById('webcam').getAttribute('aria-pressed') === 'true');
    await page.evaluate(() => {
      window.__track = document.getElementById('video').srcObject.getVideoTracks()[0];
      Object.defineProperty(document, 'hidden', { value: true, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    assert.equal(await page.evaluate(() => window.__track.readyState), 'ended');
    assert.match(await page.textContent('#webcam-status'), /Webcam off \(the tab was hidden\)/);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
  }
});

test('a refused camera permission is reported and the page keeps working', { timeout: 90_000 }, async () => {
  // A (fake) camera but no fake-UI flag and no granted permission: the request is denied.
  const b = await browser({ fakeCameraOnly: true, permissions: [] });
  try {
    const { page } = await openPage(b.context, server.url);
    await ready(page);
    await loadTestModel(page);
    await page.click('#webcam');
    await page.waitForFunction(() => !document.getElementById('message').hidden, null, { timeout: 30_000 });
    assert.match(await message(page), /Webcam: camera permission was refused\. Allow the camera for this page/);
    assert.equal(await page.getAttribute('#webcam', 'aria-pressed'), 'false');
    const d = await dropAndWait(page, [{ name: 'bottle_good_002.jpg', type: 'image/jpeg', bytes: image('bottle_good_002.jpg') }]);
    assert.ok(Number.isFinite(d.score));
  } finally {
    await b.close();
  }
});

test('a busy worker drops webcam frames: one frame in flight at most, each grabbed after the last result', { timeout: 90_000 }, async () => {
  const b = await browser({ fakeMedia: true });
  try {
    // Every detect request takes 300 ms longer (?stepdelay): the camera (Chromium's fake device,
    // 20-30 frames/s) makes far more frames than the worker scores meanwhile.
    const { page, problems } = await openPage(b.context, `${server.url}?stepdelay=300`);
    // Logs every detect request the page posts to a Worker and when its answer comes back.
    await page.addInitScript(() => {
      window.__detects = [];
      const post = Worker.prototype.postMessage;
      Worker.prototype.postMessage = function (msg, ...rest) {
        if (msg?.type === 'detect') {
          const entry = { id: msg.id, sent: performance.now(), done: null };
          window.__detects.push(entry);
          this.addEventListener('message', function answered({ data }) {
            if (data?.id !== entry.id || data.type === 'progress') return;
            entry.done = performance.now();
            this.removeEventListener('message', answered);
          });
        }
        return post.call(this, msg, ...rest);
      };
    });
    await page.reload();
    await ready(page);
    await loadTestModel(page);
    await page.click('#webcam');
    await page.waitForFunction(() => document.getElementById('video').srcObject, null, { timeout: 30_000 });
    // Count the frames the camera presents while the page scores.
    await page.evaluate(() => {
      window.__camFrames = 0;
      const v = document.getElementById('video');
      const tick = () => {
        window.__camFrames += 1;
        v.requestVideoFrameCallback(tick);
      };
      v.requestVideoFrameCallback(tick);
    });
    await page.waitForFunction(() => Number(document.getElementById('webcam-status').dataset.frames) >= 5, null, {
      timeout: 60_000,
    });
    await page.click('#webcam');
    const { detects, camFrames } = await page.evaluate(() => ({ detects: window.__detects, camFrames: window.__camFrames }));
    assert.ok(detects.length >= 5, `${detects.length} detect requests`);
    // Never queued: each request is posted after the previous one was answered.
    for (let i = 1; i < detects.length; i++) {
      assert.ok(detects[i - 1].done !== null, `request ${i - 1} never answered before request ${i}`);
      assert.ok(detects[i].sent >= detects[i - 1].done, `request ${i} sent while request ${i - 1} was in flight`);
    }
    // Each request waited the 300 ms step delay at least.
    const answered = detects.filter((d) => d.done !== null);
    assert.ok(answered.every((d) => d.done - d.sent >= 290), JSON.stringify(answered.map((d) => d.done - d.sent)));
    // Dropped: the camera presented several frames per scored frame.
    assert.ok(camFrames >= 2 * detects.length, `camera frames ${camFrames}, scored ${detects.length}`);
    assert.deepEqual(problems, []);
  } finally {
    await b.close();
  }
});
