// The admin console at HERALD_URL/admin with HERALD_ADMIN_PASSWORD, next to
// two demo users (erin and frank): a wrong password is refused; the overview
// shows NATS connected and the writers' leases; the channel page finds the
// demo users in the lobby's presence and pages room:random's history
// (HERALD_ROOM_FILL publications) both ways; the user page shows erin
// online, and revoking frank's tokens disconnects his page; a publish from
// the console shows its offset and appears in erin's chat.
import { env, launch, person, check, shot, join, main } from './lib.mjs';

const T = { timeout: 10000 };

main(async (errors) => {
  const base = env('HERALD_URL');
  const report = {};
  const browser = await launch();
  const erin = await person(browser, errors);
  const frank = await person(browser, errors);
  await join(erin.page, base, 'erin');
  await join(frank.page, base, 'frank');

  const admin = await person(browser, errors);
  const page = admin.page;
  await page.goto(`${base}/admin`);
  await page.waitForSelector('#login:not([hidden])', T);

  // A wrong password: refused, the console stays closed.
  await page.fill('#password', 'not-the-password');
  await page.click('#login-button');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent === 'wrong password', null, T);
  check(await page.isHidden('#app'), 'the console stays closed');
  const cookies = await admin.context.cookies();
  check(cookies.length === 0, 'no session cookie after a wrong password', cookies);

  await page.fill('#password', env('HERALD_ADMIN_PASSWORD'));
  await page.click('#login-button');
  await page.waitForSelector('#app:not([hidden])', T);
  const [cookie] = await admin.context.cookies();
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', 'an HttpOnly, SameSite=Strict session', cookie);
  check(await page.evaluate(() => document.cookie) === '', 'the page script cannot read the session');

  // Overview.
  await page.waitForSelector('#overview .card', T);
  await page.waitForFunction(() => document.querySelector('#overview').textContent.includes('connected'), null, T);
  await page.waitForFunction(() => /Writers \(1\)/.test(document.querySelector('#overview').textContent), null, T);
  report.overview = await page.textContent('#overview');
  await shot(page, 'admin-overview');

  // Channel: the demo users in the lobby's presence.
  await page.click('a[data-page="channels"]');
  await page.fill('#channel', 'room:lobby');
  await page.click('#channel-form button');
  await page.waitForFunction(() => {
    const t = document.querySelector('#channel-info').textContent;
    return t.includes('erin') && t.includes('frank');
  }, null, T);

  // History of room:random, paged both ways by cursor.
  await page.fill('#channel', 'room:random');
  await page.click('#channel-form button');
  const fill = Number(env('HERALD_ROOM_FILL'));
  const range = async (expected) => {
    await page.waitForFunction((e) => document.querySelector('#h-range').textContent === e, expected, T);
    return expected;
  };
  report.ranges = [await range(`offsets ${fill - 19}–${fill} of ${fill}`)];
  await page.click('#h-older');
  report.ranges.push(await range(`offsets ${fill - 39}–${fill - 20} of ${fill}`));
  await page.click('#h-newer');
  report.ranges.push(await range(`offsets ${fill - 19}–${fill} of ${fill}`));
  await page.click('#h-oldest');
  report.ranges.push(await range(`offsets 1–20 of ${fill}`));
  const firstRow = await page.textContent('#h-rows tr:first-child');
  check(firstRow.includes('fill 1'), 'the oldest page starts at the first publication', firstRow);
  await shot(page, 'admin-channel');

  // User: erin online, with her connection here and her conversations.
  await page.click('a[data-page="users"]');
  await page.fill('#user', 'erin');
  await page.click('#user-form button');
  await page.waitForFunction(() => document.querySelector('#user-info').textContent.includes('online'), null, T);
  report.user = await page.textContent('#user-info');
  check(report.user.includes('room:lobby'), 'erin\'s conversations are listed', report.user);

  // Revoking frank's tokens closes his page for good (3500, terminal).
  await page.fill('#user', 'frank');
  await page.click('#user-form button');
  await page.waitForFunction(() => document.querySelector('#user-info').textContent.includes('frank'), null, T);
  await page.click('#revoke');
  await page.waitForFunction(() => document.querySelector('#user-action-result').textContent.startsWith('revoked'), null, T);
  await frank.page.waitForSelector('#state.disconnected', T);
  report.frankState = await frank.page.textContent('#state');
  await shot(page, 'admin-user');

    // Publish into the lobby: the console shows the offset, erin's chat the text.
  await page.click('a[data-page="publish"]');
  await page.fill('#p-channel', 'room:lobby');
  await page.fill('#p-data', '{"text": "announcement from admin"}');
  await page.click('#p-send');
  await page.waitForFunction(() => /^published at offset \d+/.test(document.querySelector('#publish-result').textContent), null, T);
  const result = await page.textContent('#publish-result');
  report.publishedOffset = Number(/offset (\d+)/.exec(result)[1]);
  await erin.page.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.endsWith('announcement from admin')), null, T);
  await shot(erin.page, 'chat-admin-announcement');

  // Charts: a few samples of this node's rates.
  await page.click('a[data-page="charts"]');
  await page.waitForSelector('#charts canvas', T);
  await page.waitForTimeout(4500);
  await shot(page, 'admin-charts');

  // A forged mutating call without the CSRF header is refused, even with the cookie.
  report.csrfStatus = await page.evaluate(async () => (await fetch('/admin/api/call/publish', {
    method: 'POST', body: JSON.stringify({ channel: 'room:lobby', data: { text: 'forged' } }),
  })).status);
  check(report.csrfStatus === 403, 'no CSRF header: 403', report.csrfStatus);

  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])', T);
  await browser.close();
  return report;
});
