// Browser tests of the Lens review page (/review): Debian's chromium driven
// by playwright-core, with JavaScript off and on.
//
//   LENS_URL=http://127.0.0.1:PORT node --test review.test.mjs
//
// `cargo test --test browser` (tests/browser.rs) seeds three reports (#1 dog,
// #2 coffee, #3 a cat whose filename and label are XSS attempts), starts a
// real `lens serve`, runs this file, then checks the decisions in SQLite:
// #1 accepted (JS off), #2 relabelled espresso and #3 rejected (JS on).

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as harness from './harness.mjs';

const BASE = process.env.LENS_URL;
if (!BASE) throw new Error('set LENS_URL to the base URL of a running `lens serve`');

/** A fresh browser's page (see harness.mjs), with JavaScript on or off. */
async function openPage(javaScriptEnabled) {
  return harness.openPage(await harness.openContext({ javaScriptEnabled }));
}

after(harness.closeContexts);

/** Ids of the listed reports, in page order. */
const listedIds = (page) => page.$$eval('li.report', (items) => items.map((li) => li.id));

/** Whether every thumbnail on the page decoded. */
const thumbsLoaded = (page) =>
  page.$$eval('img.thumb', (imgs) => imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0));

async function commonChecks(page) {
  const response = await page.goto(`${BASE}/review`);
  assert.equal(response.status(), 200);
  assert.deepEqual(await listedIds(page), ['report-3', 'report-2', 'report-1'], 'newest first');
  // The hostile strings are shown as text, never run.
  const text = await page.textContent('#report-3');
  assert.ok(text.includes('<script>alert(1)</script>.png'), text);
  assert.ok(text.includes('<img src=x onerror=alert(2)>'), text);
  assert.equal(await page.$$eval('#report-3 .report-body img', (x) => x.length), 0);
  assert.ok(await thumbsLoaded(page), 'thumbnails load');
  assert.equal(await page.$$eval('#review-labels option', (o) => o.length), 1000, 'label autocomplete');
  // A label the model does not know is refused with a message, nothing stored.
  await page.fill('#label-2', 'not a label');
  const refused = page.waitForResponse((r) => r.url().endsWith('/review/2'));
  await page.click('#report-2 button[value="relabel"]');
  assert.equal((await refused).status(), 400);
  await page.waitForSelector('#message .error');
  assert.match(await page.textContent('#message'), /"not a label" is not a label/);
}

describe('the review page', { timeout: 180_000 }, () => {
  test('without JavaScript: accept, filter by status and label', async () => {
    const page = await openPage(false);
    await commonChecks(page);
    await page.goto(`${BASE}/review`);
    await page.click('#report-1 button[value="accept"]');
    await page.waitForURL(/\/review#report-1$/);
    assert.equal(await page.getAttribute('#report-1', 'data-status'), 'accepted');
    assert.match(await page.textContent('#report-1 .decision'), /Accepted as Eskimo_dog on \d{4}-\d\d-\d\d/);
    await page.selectOption('#filter-status', 'accepted');
    await page.click('#filter-button');
    await page.waitForURL(/status=accepted/);
    assert.deepEqual(await listedIds(page), ['report-1']);
    await page.goto(`${BASE}/review?label=espresso`);
    assert.deepEqual(await listedIds(page), []);
    await page.goto(`${BASE}/review?label=cup`);
    assert.deepEqual(await listedIds(page), ['report-2'], 'the predicted label matches too');
    page.assertClean();
  });

  test('with JavaScript: relabel, reject, the status filter applies at once', async () => {
    const page = await openPage(true);
    await commonChecks(page);
    await page.goto(`${BASE}/review?status=pending`);
    assert.deepEqual(await listedIds(page), ['report-3', 'report-2']);
    await page.fill('#label-2', 'espresso');
    await page.click('#report-2 button[value="relabel"]');
    // Back to the same filtered list: #2 is no longer pending.
    await page.waitForURL(/\/review\?status=pending#report-2$/);
    assert.deepEqual(await listedIds(page), ['report-3']);
    await page.click('#report-3 button[value="reject"]');
    await page.waitForURL(/#report-3$/);
    assert.deepEqual(await listedIds(page), []);
    await page.goto(`${BASE}/review`);
    await page.selectOption('#filter-status', 'rejected'); // no button click: review.js submits
    await page.waitForURL(/status=rejected/);
    assert.deepEqual(await listedIds(page), ['report-3']);
    await page.goto(`${BASE}/review?label=espresso`);
    assert.deepEqual(await listedIds(page), ['report-2']);
    assert.match(await page.textContent('#report-2 .decision'), /Relabelled as espresso/);
    page.assertClean();
  });
});
