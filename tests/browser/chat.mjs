// Two people (two browser contexts) in the demo chat: the lobby room and a
// DM. Checks presence, typing, messages both ways, the unread badge per
// conversation and in the title (cleared by reading), read receipts, and
// scrolling back through room:random's history (HERALD_ROOM_FILL messages
// published by the harness) by cursor.
// Env: HERALD_URL (http://host:port), HERALD_ROOM_FILL, and lib.mjs's.
import { env, launch, person, check, shot, join, texts, main } from './lib.mjs';

const T = { timeout: 10000 };

main(async (errors) => {
  const base = env('HERALD_URL');
  const fill = Number(env('HERALD_ROOM_FILL'));
  const report = {};
  const browser = await launch();
  const a = await person(browser, errors);
  const b = await person(browser, errors);

  await join(a.page, base, 'alice');
  await join(b.page, base, 'bob');

  // Presence: each sees the other online.
  await a.page.waitForSelector('#online [data-user="bob"]', T);
  await b.page.waitForSelector('#online [data-user="alice"]', T);

  // The lobby: alice types (bob sees it), then sends.
  await a.page.fill('#text', 'hello room');
  await b.page.waitForFunction(() => document.querySelector('#typing').textContent === 'alice is typing…', null, T);
  await a.page.click('#send');
  await b.page.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.endsWith('hello room')), null, T);
  // bob has the lobby open, so he read it: alice sees the receipt.
  await a.page.waitForFunction(() => document.querySelector('#receipt').textContent === 'Seen by bob', null, T);

  // A DM from bob: alice, in the lobby, gets a badge and a count in the title.
  await b.page.click('#online [data-user="alice"]');
  await b.page.waitForFunction(() => document.querySelector('#title').textContent === '@alice', null, T);
  await b.page.fill('#text', 'hi alice');
  await a.page.waitForFunction(() => document.querySelector('#typing').textContent === '', null, T);
  await b.page.click('#send');
  const badge = 'button[data-channel="dm:#alice,bob"] .badge';
  await a.page.waitForSelector(badge, T);
  report.badge = await a.page.textContent(badge);
  report.title = await a.page.title();
  check(report.badge === '1', 'one unread in the DM', report);
  check(report.title === '(1) Herald demo', 'the title counts it', report);
  await b.page.waitForFunction(() => document.querySelector('#receipt').textContent === 'Delivered', null, T);
  await shot(a.page, 'chat-unread');

  // alice reads: the badge and the title count go, bob sees "Seen".
  await a.page.click('button[data-channel="dm:#alice,bob"]');
  await a.page.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.endsWith('hi alice')), null, T);
  await a.page.waitForSelector(badge, { state: 'detached', ...T });
  check(await a.page.title() === 'Herald demo', 'the title count cleared');
  await b.page.waitForFunction(() => document.querySelector('#receipt').textContent === 'Seen', null, T);

  // alice answers; bob, in the DM, sees it with no badge.
  await a.page.fill('#text', 'hi bob');
  await b.page.waitForFunction(() => document.querySelector('#typing').textContent === 'alice is typing…', null, T);
  await a.page.click('#send');
  await b.page.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.endsWith('hi bob')), null, T);
  report.dmAtBob = await texts(b.page);
  check(JSON.stringify(report.dmAtBob) === JSON.stringify(['hi alice', 'hi bob']), 'bob sees the DM', report.dmAtBob);
  check(await b.page.$('button[data-channel="dm:#alice,bob"] .badge') === null, 'no badge on the open DM');
  await a.page.waitForFunction(() => document.querySelector('#receipt').textContent === 'Seen', null, T);
  await shot(b.page, 'chat-dm');

  // Scrolling back in room:random: the newest page, then older ones.
  await a.page.click('button[data-channel="room:random"]');
  await a.page.waitForFunction((n) => document.querySelectorAll('#messages li').length === Math.min(30, n), fill, T);
  report.olderPages = [(await texts(a.page)).length];
  check(!(await a.page.isHidden('#older')), 'a "load older" button while there is more');
  await a.page.click('#older');
  await a.page.waitForFunction((n) => document.querySelectorAll('#messages li').length === n, fill, T);
  const all = await texts(a.page);
  report.olderPages.push(all.length);
  check(all[0] === 'fill 1' && all[fill - 1] === `fill ${fill}`, 'history in order', all);
  check(await a.page.isHidden('#older'), 'no "load older" at the first message');
  await shot(a.page, 'chat-history');

  await browser.close();
  return report;
});
