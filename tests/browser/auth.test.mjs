// The upload page behind an API key, in Debian's chromium through
// playwright-core: the browser authenticates with HTTP Basic (any user name,
// the key as password), and the page's own requests (assets, /predict,
// /api/labels, /feedback) carry it too.
//
//   LENS_URL=http://127.0.0.1:PORT LENS_API_KEY=KEY node --test auth.test.mjs
//
// `cargo test --test browser` starts `lens serve --api-key KEY` and runs it.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { closeContexts, openContext, openPage } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DOG = path.join(HERE, '..', 'fixtures', 'dog.jpeg');
const BASE = process.env.LENS_URL;
const KEY = process.env.LENS_API_KEY;
const WAIT = { timeout: 20_000 };

if (!BASE || !KEY) throw new Error('set LENS_URL and LENS_API_KEY');

after(closeContexts);

describe('behind an API key', { timeout: 120_000 }, () => {
  test('without credentials the page is refused with a Basic challenge', async () => {
    const page = await openPage(await openContext());
    // Headless Chromium turns a Basic challenge it has no credentials for
    // into a navigation error (ERR_INVALID_AUTH_CREDENTIALS), so the
    // browser context's own request API reads the answer instead.
    await assert.rejects(page.goto(BASE), /ERR_INVALID_AUTH_CREDENTIALS/);
    const resp = await page.request.get(BASE);
    assert.equal(resp.status(), 401);
    assert.equal(resp.headers()['www-authenticate'], 'Basic realm="lens"');
    const health = await page.request.get(`${BASE}/health/ready`);
    assert.equal(health.status(), 200, 'health stays open');
  });

  test('a wrong password is refused too', async () => {
    const context = await openContext({ httpCredentials: { username: 'me', password: 'not-the-key' } });
    const page = await openPage(context);
    const resp = await page.goto(BASE);
    assert.equal(resp.status(), 401);
  });

  test('with the key as password the page classifies and reports', async () => {
    const context = await openContext({ httpCredentials: { username: 'me', password: KEY } });
    const page = await openPage(context);
    const statuses = [];
    page.on('response', (r) => statuses.push([new URL(r.url()).pathname, r.status()]));
    const resp = await page.goto(BASE);
    assert.equal(resp.status(), 200);
    await page.locator('html.js').waitFor({ state: 'attached', ...WAIT });
    await page.setInputFiles('#file', DOG);
    await page.locator('#result .prediction', { hasText: 'Predicted class: Eskimo_dog' }).waitFor(WAIT);
    await page.getByRole('button', { name: 'Report incorrect answer' }).click();
    await page.locator('#correct-label').fill('malamute');
    await page.getByRole('button', { name: 'Send report' }).click();
    await page.locator('.feedback-status', { hasText: /Thanks — report #\d+ saved/ }).waitFor(WAIT);
    const final = new Map(statuses);
    for (const p of ['/', '/static/app.js', '/static/style.css', '/predict', '/feedback']) {
      assert.equal(final.get(p), 200, `${p}: ${JSON.stringify(statuses)}`);
    }
    page.assertClean();
  });

  test('without JavaScript the plain form works with the key', async () => {
    const context = await openContext({
      httpCredentials: { username: 'me', password: KEY }, javaScriptEnabled: false,
    });
    const page = await openPage(context);
    await page.goto(BASE);
    await page.setInputFiles('input[type="file"][name="file"]', DOG);
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/', WAIT),
      page.getByRole('button', { name: 'Classify' }).click(),
    ]);
    assert.equal(resp.status(), 200);
    await page.waitForLoadState('load');
    assert.match(await page.locator('main').innerText(), /Predicted class: Eskimo_dog/);
    const src = await page.locator('#result figure img').getAttribute('src');
    const image = await page.request.get(new URL(src, BASE).href);
    assert.equal(image.status(), 200, `the kept image ${src} loads with the key`);
  });
});
