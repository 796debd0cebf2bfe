// Browser tests of the Lens upload page: Debian's chromium driven by
// playwright-core, run with Node's built-in test runner.
//
//   LENS_URL=http://127.0.0.1:PORT LENS_TEST_OUTPUT=DIR node --test page.test.mjs
//
// `cargo test --test browser` (tests/browser.rs) starts a real `lens serve`,
// runs this file, then checks through `lens feedback export` that the reports
// listed in DIR/feedback.json were stored. Every page fails its test on a
// dialog (an executed `alert`), an uncaught script error or a CSP violation.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as harness from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DOG = path.join(HERE, '..', 'fixtures', 'dog.jpeg');
const BASE = process.env.LENS_URL;
const OUT = process.env.LENS_TEST_OUTPUT || path.join(tmpdir(), 'lens-test-output');
const WAIT = { timeout: 20_000 };
// The server's --body-limit; the wrapper passes it, 10 MiB is the default.
const BODY_LIMIT = Number(process.env.LENS_BODY_LIMIT || 10 * 1024 * 1024);
const XSS_NAME = '<script>alert(1)</script>.jpg';

if (!BASE) throw new Error('set LENS_URL to the base URL of a running `lens serve`');

/** Reports sent during the run, for the Rust wrapper to find in the export. */
const feedback = [];
let dogBytes;

/** A browser of the upload page's own size; `options` go to the context. */
const openContext = (options = {}) => harness.openContext({ viewport: { width: 1000, height: 900 }, ...options });

/** Pages opened by the running test, closed after it. */
const openPages = [];

/** A new page (see harness.mjs), closed after the running test. */
async function openPage(context) {
  const page = await harness.openPage(context);
  openPages.push(page);
  return page;
}

/** Polls `condition` (a Node-side check) until it holds or the wait times out. */
async function waitUntil(condition, what) {
  const deadline = Date.now() + WAIT.timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** `promise`, or a rejection naming `what` after the usual wait. */
function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT.timeout);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Waits for a JS-rendered result naming `label`. */
async function waitForPrediction(page, label) {
  await page.locator('#result .prediction', { hasText: `Predicted class: ${label}` }).waitFor(WAIT);
}

let jsContext;
let noJsContext;

before(async () => {
  dogBytes = await readFile(DOG);
  await mkdir(OUT, { recursive: true });
  jsContext = await openContext();
  noJsContext = await openContext({ javaScriptEnabled: false });
});

afterEach(async () => {
  for (const page of openPages.splice(0)) await page.close().catch(() => {});
});

after(async () => {
  await writeFile(path.join(OUT, 'feedback.json'), `${JSON.stringify(feedback, null, 2)}\n`);
  await harness.closeContexts();
});

describe('with JavaScript', { timeout: 180_000 }, () => {
  test('the page is served under the strict CSP with its own assets', async () => {
    const page = await openPage(jsContext);
    const resp = await page.goto(BASE);
    assert.equal(resp.status(), 200);
    const csp = resp.headers()['content-security-policy'] || '';
    for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'"]) {
      assert.ok(csp.includes(directive), `CSP ${JSON.stringify(csp)} lacks ${directive}`);
    }
    // The stylesheet applied (it hides the empty result box) and app.js ran.
    assert.equal(await page.locator('#result').isVisible(), false);
    assert.equal(await page.locator('html.js').count(), 1);
    page.assertClean();
  });

  test('the status strip shows the model, queue depth and workers, and refreshes', async () => {
    const page = await openPage(jsContext);
    let polls = 0;
    page.on('request', (r) => { if (r.url().endsWith('/api/status')) polls += 1; });
    await page.clock.install();
    await page.goto(BASE);
    await page.locator('#status-queue', { hasText: /Queue: \d+/ }).waitFor(WAIT);
    assert.match(await page.locator('#status-workers').textContent(), /^Workers: [1-9]\d*$/);
    assert.equal(await page.locator('#status-model').textContent(), 'efficientnet-lite0');
    assert.equal(polls, 1);
    await page.clock.runFor(5_500);
    await waitUntil(() => polls >= 2, 'a second /api/status request');
    page.assertClean();
  });

  test('a file chosen with the file input is previewed and classified without reload', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    let navigations = 0;
    page.on('framenavigated', () => { navigations += 1; });
    await page.setInputFiles('#file', DOG);
    await waitForPrediction(page, 'Eskimo_dog');
    assert.equal(navigations, 0, 'the page reloaded');
    assert.match(await page.locator('#preview-img').getAttribute('src'), /^blob:/);
    assert.equal(await page.locator('#preview-name').textContent(), 'dog.jpeg');
    assert.match(await page.locator('#result .score').textContent(), /^Score: 0\.\d{4}$/);
    const bars = page.locator('#result .bars li');
    assert.equal(await bars.count(), 5);
    assert.equal(await bars.first().locator('.bar-label').textContent(), 'Eskimo_dog');
    const best = Number(await bars.first().locator('meter').getAttribute('value'));
    assert.ok(best > 0.3 && best <= 1, `meter value ${best}`);
    assert.match(await page.locator('#result .timing').textContent(),
      /^Took \d+\.\d ms, (from the cache|computed now)\.$/);
    page.assertClean();
  });

  test('the drop zone is keyboard operable', async () => {
    const page = await openPage(jsContext);
    // Listening before the page loads turns file-chooser interception on in time.
    const chooser = new Promise((resolve) => page.once('filechooser', resolve));
    await page.goto(BASE);
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'drop-zone');
    await page.keyboard.press('Enter');
    await (await withTimeout(chooser, 'the file chooser')).setFiles(DOG);
    await waitForPrediction(page, 'Eskimo_dog');
    page.assertClean();
  });

  test('an image dropped on the drop zone is classified', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    await page.evaluate(({ b64, name }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], name, { type: 'image/jpeg' }));
      const zone = document.getElementById('drop-zone');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data }));
      }
    }, { b64: dogBytes.toString('base64'), name: 'dropped dog.jpeg' });
    await waitForPrediction(page, 'Eskimo_dog');
    assert.equal(await page.locator('#preview-name').textContent(), 'dropped dog.jpeg');
    page.assertClean();
  });

  test('a pasted image is classified', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    await page.evaluate(({ b64 }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], 'image.jpeg', { type: 'image/jpeg' }));
      document.body.dispatchEvent(new ClipboardEvent('paste', { bubbles: true, cancelable: true, clipboardData: data }));
    }, { b64: dogBytes.toString('base64') });
    await waitForPrediction(page, 'Eskimo_dog');
    page.assertClean();
  });

  test('a file with a wrong extension is refused before any upload', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    const predicts = [];
    page.on('request', (r) => { if (r.url().includes('/predict')) predicts.push(r.url()); });
    await page.setInputFiles('#file', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') });
    const message = page.locator('#message .message.error');
    await message.waitFor(WAIT);
    assert.match(await message.textContent(), /"notes\.txt" is not a PNG, JPEG or GIF image/);
    assert.deepEqual(predicts, []);
    page.assertClean();
  });

  test("a text file renamed .jpg shows the server's error", async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    const file = { name: 'notes.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('this is not an image\n') };
    // What the server itself says about this upload.
    const direct = await page.request.post(`${BASE}/predict?top_k=5`, { multipart: { file } });
    assert.equal(direct.status(), 400);
    const { error } = await direct.json();
    assert.ok(error, 'the 400 has an `error` text');
    await page.setInputFiles('#file', file);
    const message = page.locator('#message .message.error');
    await message.waitFor(WAIT);
    assert.equal(await message.textContent(), `Lens could not classify "notes.jpg": ${error}`);
    assert.equal(await page.locator('#message [role="alert"]').count(), 1);
    assert.equal(await page.locator('#result .prediction').count(), 0);
    await page.locator('#preview').waitFor({ state: 'hidden', ...WAIT }); // no broken image
    page.assertClean();
  });

  test('a file over the body limit shows "too large" (413)', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    const buffer = Buffer.alloc(BODY_LIMIT + 1024 * 1024, 0xff);
    await page.setInputFiles('#file', { name: 'huge.jpg', mimeType: 'image/jpeg', buffer });
    const message = page.locator('#message .message.error');
    await message.waitFor(WAIT);
    assert.match(await message.textContent(), /^This file is too large for Lens \(.+\)\. Choose a smaller image\.$/);
    page.assertClean();
  });

  test('a 429 answer shows "Busy, retrying in N s" and retries once after N s', async () => {
    const page = await openPage(jsContext);
    const sent = [];
    await page.route('**/predict?*', (route) => {
      sent.push(Date.now());
      if (sent.length === 1) {
        return route.fulfill({
          status: 429, contentType: 'application/json', headers: { 'Retry-After': '1' },
          body: JSON.stringify({ success: false, prediction: null, score: null, error: 'busy' }),
        });
      }
      return route.continue(); // the retry reaches the real server
    });
    await page.goto(BASE);
    await page.setInputFiles('#file', DOG);
    await page.locator('#message .message.info', { hasText: 'Busy, retrying in 1 s' }).waitFor(WAIT);
    await waitForPrediction(page, 'Eskimo_dog');
    assert.equal(sent.length, 2);
    assert.ok(sent[1] - sent[0] >= 900, `retried after ${sent[1] - sent[0]} ms`);
    page.assertClean();
  });

  test('feedback: the field opens, labels load lazily, the report is saved', async () => {
    const page = await openPage(jsContext);
    const labelRequests = [];
    page.on('request', (r) => { if (r.url().endsWith('/api/labels')) labelRequests.push(r.url()); });
    await page.goto(BASE);
    await page.setInputFiles('#file', DOG);
    await waitForPrediction(page, 'Eskimo_dog');

    const input = page.locator('#correct-label');
    assert.equal(await input.isVisible(), false, 'the field is closed at first');
    assert.equal(labelRequests.length, 0, 'labels are fetched only when needed');
    await page.getByRole('button', { name: 'Report incorrect answer' }).click();
    await input.waitFor({ state: 'visible', ...WAIT });
    assert.equal(await page.evaluate(() => document.activeElement.id), 'correct-label');
    await page.waitForFunction(() => document.querySelectorAll('#label-list option').length > 100, null, WAIT);
    assert.equal(await page.locator('#label-list option[value="malamute"]').count(), 1);

    // Intercepted (then passed on) so the multipart body can be read; the
    // file part's bytes are left out by Chromium, its header is there.
    let request;
    await page.route('**/feedback', (route) => {
      request = route.request();
      return route.continue();
    });
    await input.fill('malamute');
    await page.getByRole('button', { name: 'Send report' }).click();
    const status = page.locator('.feedback-status', { hasText: /Thanks — report #\d+ saved/ });
    await status.waitFor(WAIT);
    assert.equal(request.method(), 'POST');
    assert.match(request.headers().accept, /application\/json/);
    const form = (request.postDataBuffer() || Buffer.alloc(0)).toString('latin1');
    assert.match(form, /name="correct_label"\r\n\r\nmalamute\r\n/);
    assert.match(form, /name="file"; filename="dog\.jpeg"/);
    const report = JSON.parse(/name="report"\r\n\r\n(.*)\r\n/.exec(form)[1]);
    assert.equal(report.prediction, 'Eskimo_dog');
    assert.equal(report.filename, 'dog.jpeg');
    assert.match(report.sha256, /^[0-9a-f]{64}$/);
    assert.equal(typeof report.score, 'number');

    const id = Number(/#(\d+)/.exec(await status.textContent())[1]);
    feedback.push({ id, correct_label: 'malamute', prediction: 'Eskimo_dog', via: 'fetch' });
    console.log(`LENS_FEEDBACK_ID ${id}`);
    page.assertClean();
  });

  test('a hostile file name is shown as text and never runs', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    await page.setInputFiles('#file', { name: XSS_NAME, mimeType: 'image/jpeg', buffer: dogBytes });
    await waitForPrediction(page, 'Eskimo_dog');
    assert.equal(await page.locator('#preview-name').textContent(), XSS_NAME);
    const report = JSON.parse(await page.locator('#feedback-form input[name="report"]').inputValue());
    assert.equal(report.filename, XSS_NAME);
    assert.equal(await page.locator('script').count(), 1, 'only app.js is a script');
    await page.waitForTimeout(300); // a late alert would still be caught
    page.assertClean();
  });

  test('the result page looks right, wide and narrow (screenshots)', async () => {
    const page = await openPage(jsContext);
    await page.goto(BASE);
    await page.setInputFiles('#file', DOG);
    await waitForPrediction(page, 'Eskimo_dog');
    await page.locator('#status-queue', { hasText: /Queue/ }).waitFor(WAIT);
    await page.waitForFunction(() => document.getElementById('preview-img').complete);
    await page.screenshot({ path: path.join(OUT, 'result-page.png'), fullPage: true });

    await page.setViewportSize({ width: 360, height: 740 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at 360px wide`);
    await page.screenshot({ path: path.join(OUT, 'result-page-narrow.png'), fullPage: true });
    page.assertClean();
  });
});

describe('without JavaScript', { timeout: 120_000 }, () => {
  /** Submits the upload form with `file` and waits for the answer page. */
  async function upload(page, file) {
    await page.goto(BASE);
    await page.setInputFiles('input[type="file"][name="file"]', file);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/', WAIT),
      page.getByRole('button', { name: 'Classify' }).click(),
    ]);
    await page.waitForLoadState('load');
    return resp;
  }

  test('the plain form posts and the server renders the result', async () => {
    const page = await openPage(noJsContext);
    const resp = await upload(page, DOG);
    assert.equal(resp.status(), 200);
    const text = await page.locator('main').innerText();
    assert.match(text, /Predicted class: Eskimo_dog/);
    assert.match(text, /Score: 0\.\d{4}/);
    assert.equal(await page.locator('#result .bars li').count(), 5);
    const src = await page.locator('#result figure img').getAttribute('src');
    const image = await page.request.get(new URL(src, BASE).href);
    assert.equal(image.status(), 200);
    assert.match(image.headers()['content-type'], /^image\//);
    assert.ok(await page.getByRole('button', { name: 'Report incorrect answer' }).isVisible());
    await page.screenshot({ path: path.join(OUT, 'result-page-nojs.png'), fullPage: true });
    page.assertClean();
  });

  test('the plain feedback form stores a report', async () => {
    const page = await openPage(noJsContext);
    await upload(page, DOG);
    await page.locator('#correct-label').fill('Siberian_husky');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'POST' && r.url().endsWith('/feedback'), WAIT),
      page.getByRole('button', { name: 'Report incorrect answer' }).click(),
    ]);
    assert.equal(resp.status(), 200);
    await page.waitForLoadState('load');
    const message = await page.locator('#message .message').innerText();
    const id = /#(\d+)/.exec(message);
    assert.ok(id, `no report number in ${JSON.stringify(message)}`);
    feedback.push({ id: Number(id[1]), correct_label: 'Siberian_husky', prediction: 'Eskimo_dog', via: 'form' });
    page.assertClean();
  });

  test('posting with no file shows the form again with a message', async () => {
    const page = await openPage(noJsContext);
    await page.goto(BASE);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'POST', WAIT),
      page.getByRole('button', { name: 'Classify' }).click(),
    ]);
    assert.equal(resp.status(), 200);
    await page.waitForLoadState('load');
    assert.ok(await page.locator('#message .message.error').isVisible());
    assert.ok(await page.locator('input[type="file"][name="file"]').isVisible());
    page.assertClean();
  });

  test('a hostile file name is escaped by the server', async () => {
    const page = await openPage(noJsContext);
    await upload(page, { name: XSS_NAME, mimeType: 'image/jpeg', buffer: dogBytes });
    assert.equal(await page.locator('#result .filename').textContent(), XSS_NAME);
    assert.equal(await page.locator('script').count(), 1, 'only app.js is a script');
    const report = JSON.parse(await page.locator('input[name="report"]').inputValue());
    assert.equal(report.filename, XSS_NAME);
    page.assertClean();
  });
});
