// Shared by the browser scripts: Playwright (npm playwright-core) on
// Debian's chromium, the environment, the cut/restore control protocol of
// tests/browser.rs, screenshots and the report.
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
}

const require = createRequire(path.join(env('HERALD_NODE_MODULES'), 'noop.js'));
const { chromium } = require('playwright-core');

// The flags CI needs: no sandbox (root), no GPU, nothing that phones home.
export async function launch() {
  return chromium.launch({
    executablePath: env('HERALD_CHROMIUM'),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

// A page in its own context (own cookies and storage: another person),
// failing the script on any page error.
export async function person(browser, errors) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(String(e)));
  // Console errors, except the browser's line for a failed request: 401 and
  // 403 are answers the pages expect (not logged in, a refused password);
  // a 404 or a 5xx fails the script with its URL below.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() === 404 || r.status() >= 500) errors.push(`HTTP ${r.status()} ${r.url()}`);
  });
  return { context, page };
}

export function check(cond, what, details) {
  if (!cond) throw new Error(`${what}${details === undefined ? '' : ': ' + JSON.stringify(details)}`);
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(env('HERALD_ARTIFACTS'), `${name}.png`) });
}

// Joins the demo at `base` as `name`; resolves once connected.
export async function join(page, base, name) {
  await page.goto(`${base}/demo`);
  await page.fill('#name', name);
  await page.click('#join');
  await page.waitForSelector('#state.connected');
}

// Texts of the messages shown in the open conversation.
export async function texts(page) {
  return page.$$eval('#messages li', (lis) => lis.map((li) => li.lastChild.textContent));
}

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (l) => { const w = waiting.shift(); if (w) w(l); });

// Asks the harness to cut or restore the network and waits until it has.
export async function control(what) {
  const done = new Promise((resolve) => waiting.push(resolve));
  console.log(JSON.stringify({ control: what }));
  await done;
}

export function main(run) {
  const errors = [];
  run(errors).then(
    (report) => {
      if (errors.length) throw new Error(`page errors: ${errors.join(' | ')}`);
      console.log(JSON.stringify({ ok: true, ...report }));
      process.exit(0);
    },
  ).catch((e) => {
    console.log(JSON.stringify({ ok: false, error: String((e && e.stack) || e), pageErrors: errors }));
    process.exit(1);
  });
}
