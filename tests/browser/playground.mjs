// The playground in a real browser: Debian's chromium driven by playwright-core (which
// downloads nothing). Run by tests/server/browser_test.cpp, which passes, in the environment:
//   FLUXPIPE_TEST_NODE_MODULES  the folder holding playwright-core (scripts/test.sh installs it)
//   FLUXPIPE_TEST_SERVER_BIN    the server with the test-double engine
//   PLAYGROUND_DATA, PLAYGROUND_PORT, PLAYGROUND_KEY, PLAYGROUND_OUT
// It starts the server itself (so it can kill and restart it mid-job), walks through what a
// user does, and exits 1 naming the first expectation that failed. The screenshot goes to
// $PLAYGROUND_OUT/playground.png and what was measured of it to $PLAYGROUND_OUT/result.json.
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { writeFileSync, openSync } from 'node:fs';

const require = createRequire(process.env.FLUXPIPE_TEST_NODE_MODULES + '/');
const { chromium } = require('playwright-core');

const port = process.env.PLAYGROUND_PORT, data = process.env.PLAYGROUND_DATA, key = process.env.PLAYGROUND_KEY;
const out = process.env.PLAYGROUND_OUT;
const base = `http://127.0.0.1:${port}`;
let server = null, browser = null;

function fail(what) {
  throw new Error(what);
}
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function startServer() {
  const log = openSync(`${data}/server.log`, 'a');
  server = spawn(process.env.FLUXPIPE_TEST_SERVER_BIN,
    ['--data', data, '--listen', `127.0.0.1:${port}`, '--fake-step-ms', '150', '--sync-wait', '10000',
     '--rate-limit', '0', '--quiet'], {stdio: ['ignore', log, log]});
  for (let i = 0; i < 200; ++i) {
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) return;
    } catch (e) { /* not up yet */ }
    await sleep(25);
  }
  fail('the server did not start');
}

function killServer() {
  return new Promise(resolve => {
    server.once('exit', resolve);
    server.kill('SIGKILL');
  });
}

// Waits until `pred()` (evaluated in the page) is true, or fails with `what`.
async function until(page, what, pred, arg, ms = 10000) {
  try {
    await page.waitForFunction(pred, arg, {timeout: ms, polling: 50});
  } catch (e) {
    const status = await page.textContent('#status').catch(() => '?');
    fail(`${what} (within ${ms} ms; the status line says: "${status}")`);
  }
}

async function main() {
  await startServer();
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({viewport: {width: 1000, height: 900}});
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', e => pageErrors.push(String(e)));
  let submissions = 0;
  page.on('request', r => { if (r.method() === 'POST' && r.url().endsWith('/generate/v3')) ++submissions; });

  await page.goto(base + '/');
  // The basics: a viewport meta tag, a favicon that loads, the test-model banner.
  if (!(await page.$('meta[name="viewport"]'))) fail('no viewport meta tag');
  const icon = await page.getAttribute('link[rel="icon"]', 'href');
  const iconRes = await fetch(base + icon);
  if (!iconRes.ok || !(iconRes.headers.get('content-type') || '').includes('svg')) fail(`the favicon ${icon} does not load`);
  await until(page, 'the banner does not say a test model is loaded',
              () => getComputedStyle(document.getElementById('banner')).display !== 'none' &&
                    /random-weight test model/.test(document.getElementById('banner').textContent));

  await page.fill('#key', key);
  await page.check('#remember');
  await page.fill('#prompt', 'a red fox in the snow');
  await page.fill('#negative', 'blurry');
  await page.fill('#width', '64');
  await page.fill('#height', '64');
  await page.fill('#steps', '14');
  await page.fill('#samples', '2');
  await page.fill('#seed', '42');

  // A double-click sends one job; the button stays disabled while it runs; progress shows
  // within the first second although the server's sync wait is 10 s.
  const clicked = Date.now();
  await page.dblclick('#go');
  if (!(await page.isDisabled('#go'))) fail('the Generate button is enabled while a job runs');
  await until(page, 'no progress within the first second',
              () => /running: step \d+ of 14|queued/.test(document.getElementById('status').textContent), null, 1500);
  const firstSign = Date.now() - clicked;
  await until(page, 'the step count does not show', () => /running: step [2-9]\d* of 14/.test(document.getElementById('status').textContent));

  // The server goes away mid-job: the page says so and keeps the job; when the server is back
  // (the job is queued again after the kill), it finishes and the images show.
  await killServer();
  await until(page, 'no message when the server went away',
              () => /cannot be reached/.test(document.getElementById('status').textContent), null, 20000);
  if (!(await page.isDisabled('#go'))) fail('the Generate button came back while the job is still pending');
  await startServer();
  await until(page, 'the images did not show after the server came back',
              () => document.querySelectorAll('#out img').length === 2 &&
                    [...document.querySelectorAll('#out img')].every(i => i.complete && i.naturalWidth === 64), null, 30000);
  if (!/done in .* seeds 42, /.test(await page.textContent('#status'))) fail(`the status line after success: ${await page.textContent('#status')}`);
  if (await page.isDisabled('#go')) fail('the Generate button stays disabled after the job');
  const doubleClickSubmissions = submissions;
  if (doubleClickSubmissions !== 1) fail(`${doubleClickSubmissions} submissions for one double-click`);

  const shot = await page.screenshot({path: `${out}/playground.png`, fullPage: true});
  // What the screenshot holds, measured in the browser: its size and how many pixels are not
  // the page's white background (the form, the text and the two images).
  const measured = await page.evaluate(async b64 => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] < 240 || px[i + 1] < 240 || px[i + 2] < 240) ++ink;
    return {width: c.width, height: c.height, non_white: ink / (c.width * c.height)};
  }, shot.toString('base64'));

  // A failing job says why and gives the button back.
  await page.fill('#prompt', 'please [fail]');
  await page.fill('#steps', '2');
  await page.click('#go');
  await until(page, 'a failed job is not reported', () => /^failed: /.test(document.getElementById('status').textContent));
  if (await page.isDisabled('#go')) fail('the Generate button stays disabled after a failure');

  // The key is kept across a reload only while "remember" is ticked.
  await page.reload();
  if ((await page.inputValue('#key')) !== key) fail('the remembered key is not restored after a reload');
  await page.uncheck('#remember');
  await page.reload();
  if ((await page.inputValue('#key')) !== '') fail('the key is still stored after "remember" was unticked');

  if (pageErrors.length) fail('uncaught errors in the page: ' + pageErrors.join('; '));
  const result = Object.assign(measured, {first_progress_ms: firstSign, submissions: doubleClickSubmissions});
  writeFileSync(`${out}/result.json`, JSON.stringify(result));
  console.log('playground: ' + JSON.stringify(result));
}

try {
  await main();
} catch (e) {
  console.error('playground test failed: ' + e.message);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  if (server && server.exitCode === null) server.kill('SIGTERM');
}
