// The newcomer's first five minutes in a real browser: Debian chromium driven by
// playwright-core. Starts `portcullis demo` (the binary in PORTCULLIS_BIN) on free
// ports: the chooser first (two dev providers), used with the keyboard alone; alice
// signs in at Example Corp through the provider's form, calls the API, signs out; bob
// types his address and lands at Example Corp's form; carol signs in at Partner.
// A screenshot per step goes to SCREENSHOTS (default tests-output/screenshots; the
// chooser's is docs/providers/several-chooser.png). Ends with "N passed, N failed".
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const bin = process.env.PORTCULLIS_BIN ?? 'target/debug/portcullis';
const shots = process.env.SCREENSHOTS ?? 'tests-output/screenshots';
mkdirSync(shots, { recursive: true });

function free(port) {
  return new Promise((resolve) => {
    const s = net.createServer().once('error', () => resolve(false)).once('listening', () => s.close(() => resolve(true)));
    s.listen(port, '127.0.0.1');
  });
}

async function freeQuad() {
  for (let i = 0; i < 200; i++) {
    const base = 20000 + Math.floor(Math.random() * 40000);
    if ((await free(base)) && (await free(base + 1)) && (await free(base + 2)) && (await free(base + 3))) return base;
  }
  throw new Error('no free ports');
}

const port = await freeQuad();
const base = `http://127.0.0.1:${port}`;
const data = mkdtempSync(path.join(tmpdir(), 'portcullis-browser-'));
const demo = spawn(bin, ['demo', '--port', String(port), '--data', data], { stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('the demo did not start in 30 s')), 30000);
  let out = '';
  demo.stdout.on('data', (chunk) => {
    out += chunk;
    if (out.includes('Press Ctrl-C')) { clearTimeout(timer); resolve(); }
  });
  demo.once('exit', (code) => reject(new Error(`the demo exited with ${code}`)));
});

// playwright's launch() gives every run a fresh, empty profile (its own temporary
// --user-data-dir), removed when the browser closes.
let browser;
try {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    timeout: 60000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
} catch (e) {
  demo.kill('SIGTERM');
  console.log(`FAIL chromium did not start: ${e.message}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

let passed = 0;
let failed = 0;
async function step(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
function check(condition, message) {
  if (!condition) throw new Error(message);
}

// How each user reaches the provider's form from the chooser.
const choose = {
  // The keyboard alone: Tab to "Continue with Example Corp", Enter.
  async keyboard(page, providerName) {
    for (let i = 0; i < 10; i++) {
      await page.keyboard.press('Tab');
      const focused = await page.evaluate(() => document.activeElement?.textContent ?? '');
      if (focused.includes(providerName)) {
        await page.keyboard.press('Enter');
        return;
      }
    }
    throw new Error(`no focusable "Continue with ${providerName}"`);
  },
  // The email field: the domain picks the provider.
  async email(page, _providerName, email) {
    await page.getByLabel('Work email').fill(email);
    await page.getByRole('button', { name: 'Continue' }).click();
  },
  // A click on the provider's link, found by its accessible name.
  async click(page, providerName) {
    await page.getByRole('link', { name: `Continue with ${providerName}` }).click();
  },
};

async function signIn(context, user, password, prefix, how, providerName, idpPort, domain) {
  const page = await context.newPage();
  await step(`${user}: opening the demo shows the chooser, then ${providerName}'s sign-in form (${how})`, async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('nav[aria-label="Identity providers"]', { timeout: 10000 });
    check(await page.title() === 'Sign in', `title: ${await page.title()}`);
    check(await page.getByRole('heading', { name: 'Sign in' }).count() === 1, 'one heading');
    await page.screenshot({ path: `${shots}/${prefix}-0-chooser.png`, fullPage: true });
    await choose[how](page, providerName, `${user}@${domain}`);
    await page.waitForSelector('input[name=password]', { timeout: 10000 });
    check(page.url().startsWith(`http://127.0.0.1:${idpPort}/authorize`), `at ${page.url()}`);
    await page.screenshot({ path: `${shots}/${prefix}-1-sign-in-form.png`, fullPage: true });
  });
  await step(`${user}: signing in lands on the app showing ${user}`, async () => {
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', password);
    await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')]);
    await page.waitForFunction(() => document.getElementById('session').textContent.includes('"authenticated": true'));
    const name = await page.textContent('#name');
    check(name.toLowerCase().includes(user), `name shown: ${name}`);
    const headers = await page.textContent('#headers');
    check(headers.includes(`x-user-email: ${user}@${domain}`), `headers: ${headers}`);
    const id = providerName === 'Partner' ? 'partner' : 'corp';
    check(headers.includes(`x-user-provider: ${id}`), `headers: ${headers}`);
    await page.screenshot({ path: `${shots}/${prefix}-2-signed-in.png`, fullPage: true });
  });
  await step(`${user}: the API answers through the gateway`, async () => {
    await page.click('#call');
    await page.waitForFunction(() => document.getElementById('answer').textContent.includes('Hello'));
    const answer = await page.textContent('#answer');
    check(answer.toLowerCase().includes(user), `answer: ${answer}`);
    await page.screenshot({ path: `${shots}/${prefix}-3-api.png`, fullPage: true });
  });
  await step(`${user}: no token is visible to the page`, async () => {
    const cookies = await context.cookies(base);
    const session = cookies.find((c) => c.name === 'portcullis');
    check(session && session.httpOnly, 'the session cookie is HttpOnly');
    const readable = await page.evaluate(() => document.cookie);
    check(!readable.includes('portcullis='), `document.cookie: ${readable}`);
  });
  await step(`${user}: signing out shows the signed-out page and ends the session`, async () => {
    await Promise.all([page.waitForURL(`${base}/signed-out`), page.click('#signout')]);
    await page.waitForSelector('#signed-out');
    const res = await page.request.get(`${base}/auth/session`);
    check(res.status() === 401, `session after sign-out: ${res.status()}`);
    await page.screenshot({ path: `${shots}/${prefix}-4-signed-out.png`, fullPage: true });
  });
}

try {
  const alice = await browser.newContext();
  await signIn(alice, 'alice', 'alice', 'alice', 'keyboard', 'Example Corp', port + 1, 'example.com');
  const bob = await browser.newContext();
  await signIn(bob, 'bob', 'bob', 'bob', 'email', 'Example Corp', port + 1, 'example.com');
  const carol = await browser.newContext();
  await signIn(carol, 'carol', 'carol', 'carol', 'click', 'Partner', port + 3, 'partner.example');
} finally {
  await browser.close();
  demo.kill('SIGTERM');
  rmSync(data, { recursive: true, force: true });
}
console.log(`screenshots in ${path.resolve(shots)}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
