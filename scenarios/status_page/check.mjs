// The sharder's status page as an operator's browser sees it: headless
// Chromium (Debian's, driven by playwright-core) opens the page, waits for
// a cell per shard, all `active`, forces one shard to reconnect through the
// simulator (its RESUMED held back 4 s), and watches that cell turn
// `resuming` and back to `active` without a reload. Prints ONE JSON line on
// stdout for the Rust test:
// {cells, all_active_ms, dns_cells, faults, saw_resuming, back_active,
//  resuming_ms, active_again_ms, reloaded, console_errors, screenshot, error};
// exits 1 when a step failed (`error` says which), 0 otherwise.
//
// Environment: PAGE_URL (http://127.0.0.1:PORT/), SIM_URL (the simulator,
// http://127.0.0.1:PORT), SHARDS (cells expected), SHARD (the one to
// reconnect), SCREENSHOT (PNG path), TIMEOUT_MS (per step, default 60000),
// CHROMIUM (browser executable, default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const { PAGE_URL, SIM_URL, SCREENSHOT } = process.env;
const SHARDS = Number(process.env.SHARDS);
const SHARD = Number(process.env.SHARD);
const TIMEOUT = Number(process.env.TIMEOUT_MS || 60000);

const out = {
  cells: 0, all_active_ms: null, dns_cells: [], faults: [], saw_resuming: false, back_active: false,
  resuming_ms: null, active_again_ms: null, reloaded: false, console_errors: [],
  screenshot: SCREENSHOT ?? null, error: null,
};
const problems = []; // console errors/warnings, page errors, failed requests
let collecting = true;

// Runs one step; a failure names the step, first line of the message only.
async function step(name, fn) {
  try {
    return await fn();
  } catch (e) {
    throw new Error(`${name}: ${String(e?.message ?? e).split('\n')[0]}`);
  }
}

async function fault(kind, body) {
  const res = await fetch(`${SIM_URL}/sim/faults/${kind}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(TIMEOUT),
  });
  out.faults.push(res.status);
  if (!res.ok) throw new Error(`POST /sim/faults/${kind} answered ${res.status}`);
}

const cellCount = () => document.querySelectorAll('[data-shard]').length;

let browser;
let page;
try {
  browser = await step('launch chromium', () =>
    chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox'],
      timeout: TIMEOUT,
    }),
  );
  page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  page.setDefaultTimeout(TIMEOUT);
  let navigations = 0;
  page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations += 1; });
  page.on('console', (m) => {
    if (collecting && (m.type() === 'error' || m.type() === 'warning')) problems.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => { if (collecting) problems.push(`pageerror: ${e.message}`); });
  page.on('requestfailed', (r) => {
    if (collecting) problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`);
  });

  // a, b: open the page, then every shard's cell present and active.
  const opened = Date.now();
  await step('open the page', () => page.goto(PAGE_URL, { waitUntil: 'load' }));
  await page.evaluate(() => { window.__bulwarkMarker = 1; });
  await step(`wait for ${SHARDS} cells, all active`, () =>
    page.waitForFunction(
      (n) => {
        const cells = document.querySelectorAll('[data-shard]');
        return cells.length === n && [...cells].every((c) => c.getAttribute('data-state') === 'active');
      },
      SHARDS,
      { polling: 50, timeout: TIMEOUT },
    ),
  );
  out.all_active_ms = Date.now() - opened;
  out.cells = await page.evaluate(cellCount);
  // The processes table's DNS column, one text per process row.
  await step('wait for both process rows', () =>
    page.waitForFunction(() => document.querySelectorAll('#procs tbody tr').length === 2, null,
      { polling: 50, timeout: TIMEOUT }),
  );
  out.dns_cells = await page.evaluate(() => {
    const heads = [...document.querySelectorAll('#procs thead th')].map((h) => h.textContent);
    const col = heads.findIndex((h) => h.startsWith('DNS'));
    return [...document.querySelectorAll('#procs tbody tr')].map((r) => r.children[col]?.textContent ?? null);
  });

  // c: hold the next RESUMED for 4 s, then op 7 the shard.
  await step('slow-resume fault', () => fault('slow-resume', { shards: [SHARD], ms: 4000 }));
  await step('reconnect fault', () => fault('reconnect', { shards: [SHARD] }));
  const forced = Date.now();

  // d: the cell turns resuming, then active again, in the same page.
  const cell = `[data-shard="${SHARD}"]`;
  await step(`wait for shard ${SHARD} resuming`, () =>
    page.waitForSelector(`${cell}[data-state="resuming"]`, { state: 'attached', timeout: TIMEOUT }),
  );
  out.saw_resuming = true;
  out.resuming_ms = Date.now() - forced;
  await step(`wait for shard ${SHARD} active again`, () =>
    page.waitForSelector(`${cell}[data-state="active"]`, { state: 'attached', timeout: TIMEOUT }),
  );
  out.back_active = true;
  out.active_again_ms = Date.now() - forced;
  out.cells = await page.evaluate(cellCount);
  const marker = await page.evaluate(() => window.__bulwarkMarker);
  out.reloaded = marker !== 1 || navigations !== 1;
  if (out.reloaded) throw new Error('the page reloaded (its marker is gone)');

  // e: what an operator would see.
  if (SCREENSHOT) await step('screenshot', () => page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: TIMEOUT }));
} catch (e) {
  out.error = String(e?.message ?? e);
  // Best effort, to see what went wrong.
  if (page) out.cells = await page.evaluate(cellCount).catch(() => out.cells);
  if (page && SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: 5000 }).catch(() => {});
} finally {
  collecting = false; // closing aborts the page's in-flight poll: not the page's fault
  out.console_errors = problems;
  await browser?.close().catch(() => {});
}
process.stdout.write(`${JSON.stringify(out)}\n`);
process.exitCode = out.error ? 1 : 0;
