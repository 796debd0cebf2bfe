// What the browser test files share: Debian's chromium through
// playwright-core with a fresh profile per context, pages that record what
// makes a test dirty, and the clean-up after a file's tests.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.LENS_CHROMIUM || '/usr/bin/chromium';

const contexts = [];

/** A browser with a fresh profile directory; `options` go to the context. */
export async function openContext(options = {}) {
  const profile = await mkdtemp(path.join(tmpdir(), 'lens-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    ...options,
  });
  contexts.push({ context, profile });
  return context;
}

/**
 * A new page that records dialogs (an executed `alert`), uncaught script
 * errors and CSP violations; `page.assertClean()` fails the test on any.
 */
export async function openPage(context) {
  const page = await context.newPage();
  const problems = [];
  page.on('dialog', (d) => {
    problems.push(`dialog fired: ${d.type()} ${JSON.stringify(d.message())}`);
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => problems.push(`uncaught error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
      problems.push(`CSP violation: ${m.text()}`);
    }
  });
  page.assertClean = () => assert.deepEqual(problems, [], 'the page misbehaved');
  return page;
}

/** Closes every context opened so far and removes its profile. */
export async function closeContexts() {
  for (const { context, profile } of contexts.splice(0)) {
    await context.close().catch(() => {});
    await rm(profile, { recursive: true, force: true }).catch(() => {});
  }
}
