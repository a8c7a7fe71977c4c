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
