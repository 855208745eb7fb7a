// End to end: the web console in Chromium against a real `ternd serve` and a real node
// host, used the way an operator would. Usage (see .ci/console):
//
//   TERND=target/debug/ternd SCREENSHOTS=/tmp/shots node daemon/tests/console/console.test.mjs
//
// Exits 0 when every step passed, 1 otherwise with what was expected, the page's error
// banner and the tails of the daemon's and node host's logs. Everything it starts is
// stopped, and its temporary directories are removed (the screenshots are kept).

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const TERND = path.resolve(process.env.TERND || 'target/debug/ternd');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOTS = path.resolve(
  process.env.SCREENSHOTS || fs.mkdtempSync(path.join(os.tmpdir(), 'tern-console-screenshots-')),
);
/** How long any one wait may take. */
const TIMEOUT_MS = Number(process.env.STEP_TIMEOUT_MS || 20000);
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const ECHO_TEXT = 'hello from the console';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-console-'));
const stateDir = path.join(work, 'daemon');
const nodeDir = path.join(work, 'node');
const profileDir = path.join(work, 'chromium-profile');
const identityFile = path.join(stateDir, 'admin.identity');
const logs = { daemon: path.join(work, 'daemon.log'), node: path.join(work, 'node.log') };
fs.mkdirSync(SCREENSHOTS, { recursive: true });

/** A failed expectation: its message says what was expected. */
class Failure extends Error {}

const children = {};
let context = null;
let page = null;
const pageProblems = [];

// -------------------------------------------------------------------------------------
// Helpers

function say(text) {
  process.stdout.write(`  ${text}\n`);
}

function step(text) {
  process.stdout.write(`\n== ${text} (${new Date().toISOString().slice(11, 19)})\n`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TCP port nobody listens on now (on 127.0.0.1). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** Starts a long-running `ternd` process; its output goes to its log. */
function start(name, args) {
  const log = fs.openSync(logs[name], 'a');
  fs.writeSync(log, `$ ternd ${args.join(' ')}\n`);
  const child = spawn(TERND, args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  child.exitStatus = null;
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      child.exitStatus = { code, signal };
      resolve(child.exitStatus);
    });
  });
  child.once('error', (e) => {
    fs.appendFileSync(logs[name], `could not start ${TERND}: ${e.message}\n`);
  });
  children[name] = child;
  return child;
}

/** Runs a short `ternd` command to its end. */
function ternd(args, timeoutMs = TIMEOUT_MS) {
  return new Promise((resolve) => {
    execFile(TERND, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
    });
  });
}

function describeExit(status) {
  return status.signal ? `killed by ${status.signal}` : `exited with ${status.code}`;
}

/** Fails at once if a process that should be running has ended. */
function checkRunning(...names) {
  for (const name of names) {
    const child = children[name];
    if (child && child.exitStatus) {
      throw new Failure(`the ${name} ${describeExit(child.exitStatus)} (see its log below)`);
    }
  }
}

/**
 * Polls `probe` every 200 ms until it returns a truthy value (returned), for at most
 * `timeoutMs`. `alive` names the processes that must keep running meanwhile.
 */
async function waitFor(what, probe, { timeoutMs = TIMEOUT_MS, alive = [] } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    checkRunning(...alive);
    try {
      const value = await probe();
      if (value) return value;
      last = null;
    } catch (e) {
      if (e instanceof Failure) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      const why = last ? ` (last attempt: ${String(last.message || last).split('\n')[0]})` : '';
      throw new Failure(`timed out after ${timeoutMs / 1000} s waiting for ${what}${why}`);
    }
    await sleep(200);
  }
}

const byTestId = (id) => `[data-testid="${id}"]`;

/** The text of the first element matching `selector`, or null if there is none. */
async function textOf(selector) {
  const locator = page.locator(selector).first();
  if ((await locator.count()) === 0) return null;
  return (await locator.textContent()) ?? '';
}

/** Waits until the first element matching `selector` has a text matching `pattern`. */
async function waitText(selector, pattern, what, options = {}) {
  return waitFor(what, async () => {
    const text = await textOf(selector);
    return text !== null && pattern.test(text.trim()) ? text.trim() : null;
  }, options);
}

async function waitVisible(selector, what, options = {}) {
  return waitFor(what, () => page.locator(selector).first().isVisible(), options);
}

async function screenshot(name) {
  const file = path.join(SCREENSHOTS, name);
  await page.screenshot({ path: file, fullPage: false });
  say(`screenshot ${file}`);
}

/** The page's error banner, if it shows one. */
async function bannerText() {
  try {
    const banner = page.locator(byTestId('error-banner'));
    if (await banner.isVisible()) return (await banner.innerText()).replace(/\s*×\s*$/, '').trim();
  } catch { /* no page */ }
  return null;
}

async function navigate(nav, view) {
  await page.click(byTestId(`nav-${nav}`));
  await waitFor(`the ${view} page`, async () => (await page.locator('main').getAttribute('data-view')) === view);
}

function tail(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
    return text.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// -------------------------------------------------------------------------------------
// Cleanup

async function stopChild(name) {
  const child = children[name];
  if (!child || child.exitStatus || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const ended = await Promise.race([child.exited, sleep(5000).then(() => null)]);
  if (!ended) {
    child.kill('SIGKILL');
    await Promise.race([child.exited, sleep(2000)]);
  }
}

let cleaning = null;
/** Stops everything this test started; every caller waits for the same cleanup. */
function cleanup() {
  if (!cleaning) cleaning = stopAll();
  return cleaning;
}

async function stopAll() {
  if (context) await Promise.race([context.close().catch(() => {}), sleep(10000)]);
  await stopChild('node');
  await stopChild('daemon');
  if (process.env.CONSOLE_TEST_KEEP) {
    say(`work directory kept: ${work}`);
  } else {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    process.stderr.write(`\nconsole test: ${signal}, stopping\n`);
    cleanup().finally(() => process.exit(1));
  });
}

// -------------------------------------------------------------------------------------
// The test

async function main() {
  if (!fs.existsSync(TERND)) throw new Failure(`no ternd binary at ${TERND} (set TERND)`);
  if (!fs.existsSync(CHROMIUM)) throw new Failure(`no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  fs.mkdirSync(stateDir, { recursive: true });
  fs.mkdirSync(nodeDir, { recursive: true });

  step('daemon');
  const nodePort = await freePort();
  let operatorPort = await freePort();
  while (operatorPort === nodePort) operatorPort = await freePort();
  start('daemon', [
    '--state-dir', stateDir, 'serve',
    '--listen-quic', 'off',
    '--listen-tcp', `127.0.0.1:${nodePort}`,
    '--public-names', '127.0.0.1',
    '--operator-listen', `127.0.0.1:${operatorPort}`,
    '--pairing-approval', 'false',
  ]);
  await waitFor('`ternd status` to answer', async () => (await ternd(['--state-dir', stateDir, 'status'])).code === 0,
    { alive: ['daemon'], timeoutMs: 30000 });
  await waitFor(`the operator listener on 127.0.0.1:${operatorPort}`, () => canConnect(operatorPort), { alive: ['daemon'] });
  say(`ternd serves nodes on 127.0.0.1:${nodePort} (TCP), operators on https://127.0.0.1:${operatorPort}`);

  step('operator identity');
  const added = await ternd(['--state-dir', stateDir, 'operator', 'add', 'admin', '--role', 'admin', '--out', identityFile]);
  if (added.code !== 0) {
    throw new Failure(`\`ternd operator add admin --role admin --out ...\` exited with ${added.code}: ${added.stderr.trim() || added.stdout.trim()}`);
  }
  await waitFor(`the identity file ${identityFile}`, () => {
    const text = fs.existsSync(identityFile) ? fs.readFileSync(identityFile, 'utf8') : '';
    return text.includes('-----BEGIN CERTIFICATE-----') && text.includes('-----BEGIN PRIVATE KEY-----');
  });
  say('admin.identity written');

  step('Chromium: sign in');
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    args: CHROMIUM_FLAGS,
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
    timeout: 60000,
  });
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on('pageerror', (e) => pageProblems.push(`uncaught exception: ${e.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content[- ]Security[- ]Policy/i.test(msg.text())) {
      pageProblems.push(`CSP violation: ${msg.text()}`);
    }
  });
  const origin = `https://127.0.0.1:${operatorPort}`;
  const response = await page.goto(`${origin}/`);
  if (!response || !response.ok()) throw new Failure(`GET / answered ${response ? response.status() : 'nothing'}`);
  const csp = (await response.allHeaders())['content-security-policy'] || '';
  if (!csp.includes("default-src 'none'") || !csp.includes("script-src 'self'")) {
    throw new Failure(`expected GET / to carry a strict Content-Security-Policy, found ${JSON.stringify(csp)}`);
  }
  await waitVisible(byTestId('login-file'), 'the login form');
  await screenshot('login.png');
  await page.setInputFiles(byTestId('login-file'), identityFile);
  await page.click(byTestId('login-submit'));
  await waitText(byTestId('operator-name'), /^admin$/, 'the operator name "admin" in the page after signing in');
  await waitText(byTestId('operator-role'), /admin/i, 'the role "admin" in the page');
  say('signed in as admin');

  step('pairing: mint a code in the console');
  await navigate('pairing', 'pairing');
  await page.click(byTestId('pair-create'));
  const code = await waitText(byTestId('pair-code'), /^\S+-\S+-\S+$/, 'a pairing code (IIII-SSSS-SSSS) on the page');
  const uri = (await textOf(byTestId('pair-uri'))).trim();
  const deviceId = (await textOf(byTestId('pair-device-id'))).trim();
  if (!uri.startsWith('tern://')) throw new Failure(`expected a tern:// URI on the page, found ${JSON.stringify(uri)}`);
  if (!deviceId) throw new Failure('expected the device id of the code on the page');
  await waitFor('the QR code image to load', () => page.evaluate(() => {
    const img = document.querySelector('[data-testid="pair-qr"]');
    return Boolean(img && img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:'));
  }));
  await waitFor('the new code in the list of codes', async () => (await page.locator(`${byTestId('pair-row')}`).count()) > 0);
  await screenshot('pairing.png');
  say(`code ${code} for device ${deviceId}`);

  step('inventory: the node appears without a reload');
  await navigate('nodes', 'nodes');
  await waitFor('the inventory to load', async () => !/Loading/.test((await textOf(byTestId('node-summary'))) || 'Loading'));
  await page.evaluate(() => { window.ternConsoleTestMark = 'not reloaded'; });
  start('node', [
    'node', 'run',
    '--daemon', `127.0.0.1:${nodePort}`,
    '--code', code,
    '--node-state-dir', nodeDir,
    '--tcp-only',
    '--health-every', '1',
  ]);
  const row = `${byTestId('node-row')}[data-node-id="${deviceId}"]`;
  await waitFor(`node ${deviceId} online in the inventory`, async () => (await page.locator(`${row}[data-state="online"]`).count()) === 1,
    { alive: ['daemon', 'node'], timeoutMs: 30000 });
  await waitFor(`node ${deviceId}'s capabilities (echo) in the inventory`,
    async () => (await page.locator(`${row} ${byTestId('capability')}`).allTextContents()).includes('echo'),
    { alive: ['daemon', 'node'] });
  if ((await page.evaluate(() => window.ternConsoleTestMark)) !== 'not reloaded') {
    throw new Failure('the inventory page reloaded itself; it should update in place');
  }
  const trust = (await textOf(`${row} ${byTestId('node-trust')}`)).trim();
  const transport = (await textOf(`${row} ${byTestId('node-transport')}`)).trim();
  if (trust !== 'paired') throw new Failure(`expected trust "paired" in the row, found ${JSON.stringify(trust)}`);
  if (transport !== 'tcp') throw new Failure(`expected transport "tcp" in the row, found ${JSON.stringify(transport)}`);
  await screenshot('inventory.png');
  say(`${deviceId} online over ${transport}`);

  step('node page: call echo, see health');
  await page.click(`${row} ${byTestId('node-link')}`);
  await waitFor(`the page of ${deviceId}`, async () => (await page.evaluate(() => location.hash)) === `#/node/${encodeURIComponent(deviceId)}`);
  await waitText(byTestId('node-state'), /^online$/, 'the node page to show the node online', { alive: ['daemon', 'node'] });
  await page.fill(byTestId('call-capability'), 'echo');
  await page.fill(byTestId('call-input'), '{"text": oops');
  await page.click(byTestId('call-submit'));
  await waitVisible(byTestId('call-input-error'), 'a plain error for input that is not JSON');
  await page.fill(byTestId('call-input'), JSON.stringify({ text: ECHO_TEXT }));
  await page.click(byTestId('call-submit'));
  await waitText(byTestId('call-state'), /^succeeded$/, 'the echo call to succeed on the page', { alive: ['daemon', 'node'] });
  const output = await textOf(byTestId('call-output'));
  if (!output.includes(ECHO_TEXT)) {
    throw new Failure(`expected the echoed text ${JSON.stringify(ECHO_TEXT)} in the call output, found ${JSON.stringify(output)}`);
  }
  await waitFor('the echo call in the recent calls', async () => (await page.locator(`${byTestId('call-row')}[data-state="succeeded"]`).count()) > 0);
  await waitFor('a health figure from the node\'s health events', async () => (await page.locator(`${byTestId('health-panel')} ${byTestId('health-figure')}`).count()) > 0,
    { alive: ['daemon', 'node'] });
  await waitVisible(`${byTestId('health-figure')}[data-figure="uptime"]`, 'the uptime figure');
  await page.locator(byTestId('call-output')).scrollIntoViewIfNeeded();
  await screenshot('node.png');
  say(`echo answered ${JSON.stringify(output.replace(/\s+/g, ' '))}; health shown`);

  step('events: a health event arrives live');
  await navigate('events', 'events');
  await waitText(byTestId('event-stream-state'), /^live$/, 'the event stream to be live');
  await sleep(500);
  const healthRows = `${byTestId('event-row')}[data-node-id="${deviceId}"]:is([data-event-name="health"], [data-event-name="system.health"])`;
  const seqs = async () => (await page.locator(healthRows).evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-seq')))));
  const before = Math.max(0, ...(await seqs()));
  await waitFor(`a health event of ${deviceId} with seq above ${before} to arrive live`, async () => Math.max(0, ...(await seqs())) > before,
    { alive: ['daemon', 'node'] });
  await page.fill(byTestId('event-filter-name'), 'health');
  const names = await page.locator(byTestId('event-row')).evaluateAll((rows) => rows.map((r) => r.getAttribute('data-event-name')));
  if (!names.length || names.some((n) => !n.includes('health'))) {
    throw new Failure(`expected only health events with the name filter "health", found ${JSON.stringify([...new Set(names)])}`);
  }
  await screenshot('events.png');
  say(`health events arriving (seq above ${before})`);

  step('posture');
  await navigate('posture', 'posture');
  await waitFor('the posture page to count 1 node online', async () => (await page.locator(byTestId('posture-online')).getAttribute('data-value')) === '1');
  await waitVisible(byTestId('posture-mtls'), 'the mTLS posture');
  await waitText(byTestId('whoami-name'), /^admin$/, 'WhoAmI: admin');
  await screenshot('posture.png');

  step('an unknown node shows the error');
  await page.evaluate(() => { location.hash = '#/node/no-such-node'; });
  await waitFor('the error banner with NOT_FOUND', async () => /NOT_FOUND/.test((await bannerText()) || ''));
  await page.click(byTestId('error-dismiss'));
  say(`banner: ${(await textOf(byTestId('error-code')))?.trim()}`);

  step('revoke from the node page');
  await page.evaluate((id) => { location.hash = `#/node/${encodeURIComponent(id)}`; }, deviceId);
  await waitText(byTestId('node-state'), /^online$/, 'the node page to show the node online', { alive: ['daemon', 'node'] });
  await page.click(byTestId('revoke-button'));
  await waitVisible(byTestId('revoke-dialog'), 'the revoke confirmation');
  await page.fill(byTestId('revoke-reason'), 'console end-to-end test');
  await page.click(byTestId('revoke-confirm'));
  await waitText(byTestId('node-state'), /^revoked$/, 'the node page to show the node revoked', { alive: ['daemon'] });
  await waitVisible(byTestId('revoke-result'), 'the revocation result');
  await screenshot('revoked.png');
  const nodeExit = await Promise.race([children.node.exited, sleep(TIMEOUT_MS).then(() => null)]);
  if (!nodeExit) throw new Failure(`the node host still runs ${TIMEOUT_MS / 1000} s after its revocation; it should be cut off and stop`);
  const nodeLog = fs.readFileSync(logs.node, 'utf8');
  if (nodeExit.code !== 6 && !/revoked/i.test(nodeLog)) {
    throw new Failure(`the node host ${describeExit(nodeExit)} without saying it was revoked (expected exit 6, "rejected")`);
  }
  say(`node host ${describeExit(nodeExit)}: ${nodeLog.trim().split('\n').filter((l) => /revoked/i.test(l)).pop() || ''}`);
  const listed = await ternd(['--state-dir', stateDir, 'nodes', '--json']);
  if (listed.code !== 0) throw new Failure(`\`ternd nodes --json\` exited with ${listed.code}: ${listed.stderr.trim()}`);
  let nodes;
  try { nodes = JSON.parse(listed.stdout); } catch { throw new Failure(`\`ternd nodes --json\` printed no JSON: ${listed.stdout}`); }
  const entry = (Array.isArray(nodes) ? nodes : nodes.nodes || []).find((n) => n.id === deviceId);
  if (!entry || !/revoked/i.test(String(entry.state))) {
    throw new Failure(`expected \`ternd nodes --json\` to list ${deviceId} as revoked, found ${JSON.stringify(entry)}`);
  }
  await navigate('nodes', 'nodes');
  await waitFor(`${deviceId} revoked in the inventory`, async () => (await page.locator(`${row}[data-state="revoked"] ${byTestId('node-trust')}`).count()) === 1);
  say(`${deviceId} revoked: the page, the node host and \`ternd nodes\` agree`);

  step('sign out');
  await page.click(byTestId('logout'));
  await waitVisible(byTestId('login-file'), 'the login form after signing out');
  const after = await page.evaluate(async () => (await fetch('/console/session', { credentials: 'same-origin' })).status);
  if (after !== 401) throw new Failure(`expected GET /console/session to answer 401 after signing out, got ${after}`);

  step('a viewer: admin controls disabled, a refusal shown');
  const viewerFile = path.join(stateDir, 'viewer.identity');
  const viewer = await ternd(['--state-dir', stateDir, 'operator', 'add', 'watcher', '--role', 'viewer', '--out', viewerFile]);
  if (viewer.code !== 0) throw new Failure(`\`ternd operator add watcher --role viewer\` exited with ${viewer.code}: ${viewer.stderr.trim()}`);
  await page.setInputFiles(byTestId('login-file'), viewerFile);
  await page.click(byTestId('login-submit'));
  await waitText(byTestId('operator-name'), /^watcher$/, 'the operator name "watcher" after signing in');
  await waitText(byTestId('operator-role'), /viewer/i, 'the role "viewer"');
  await navigate('pairing', 'pairing');
  if (!(await page.locator(byTestId('pair-create')).isDisabled())) {
    throw new Failure('expected "Create pairing code" to be disabled for a viewer');
  }
  // Were the button enabled, the daemon would refuse: the page must say so.
  await page.locator(byTestId('pair-create')).evaluate((b) => { b.disabled = false; });
  await page.click(byTestId('pair-create'));
  await waitFor('the error banner with PERMISSION_DENIED', async () => /PERMISSION_DENIED/.test((await bannerText()) || ''));
  say(`banner: ${await bannerText()}`);
  await page.click(byTestId('logout'));
  await waitVisible(byTestId('login-file'), 'the login form after signing out');

  if (pageProblems.length) {
    throw new Failure(`the page reported problems:\n    ${pageProblems.join('\n    ')}`);
  }
}

let failed = false;
try {
  await main();
  process.stdout.write(`\nconsole test: passed; screenshots in ${SCREENSHOTS}\n`);
} catch (e) {
  failed = true;
  const lines = [`\nconsole test FAILED: ${e instanceof Failure ? e.message : e.stack || e}`];
  if (page) {
    const banner = await bannerText();
    lines.push(`  page: ${page.url()}`);
    lines.push(`  page error banner: ${banner ?? '(none)'}`);
    try {
      await page.screenshot({ path: path.join(SCREENSHOTS, 'failure.png') });
      lines.push(`  screenshot: ${path.join(SCREENSHOTS, 'failure.png')}`);
    } catch { /* the browser is gone */ }
  }
  if (pageProblems.length) lines.push(`  page problems:\n    ${pageProblems.join('\n    ')}`);
  for (const [name, file] of Object.entries(logs)) {
    if (fs.existsSync(file)) lines.push(`---- ${name} log (last 40 lines)\n${tail(file)}`);
  }
  process.stderr.write(`${lines.join('\n')}\n`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
