// One person's network drops and comes back: dave's page is loaded through
// the harness's cuttable proxy (HERALD_URL_CUTTABLE), carol's directly
// (HERALD_URL). While dave is cut off carol sends three messages; dave's
// page shows it lost the connection, reconnects by itself and shows exactly
// those messages, then live ones again.
import { env, launch, person, check, shot, join, texts, control, main } from './lib.mjs';

const T = { timeout: 10000 };
const has = (text) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.endsWith(text));

main(async (errors) => {
  const report = {};
  const browser = await launch();
  const carol = await person(browser, errors);
  const dave = await person(browser, errors);
  await join(carol.page, env('HERALD_URL'), 'carol');
  await join(dave.page, env('HERALD_URL_CUTTABLE'), 'dave');
  await carol.page.click('#online [data-user="dave"]', T);
  await dave.page.click('#online [data-user="carol"]', T);
  await carol.page.fill('#text', 'before the cut');
  await carol.page.click('#send');
  await dave.page.waitForFunction(has, 'before the cut', T);

  await control('cut');
  await dave.page.waitForSelector('#state:not(.connected)', T);
  report.stateWhileCut = await dave.page.textContent('#state');
  // While dave's page still retries, carol's messages are stored.
  for (let i = 1; i <= 3; i++) {
    await carol.page.fill('#text', `missed ${i}`);
    await carol.page.click('#send');
    await carol.page.waitForFunction(has, `missed ${i}`, T);
  }
  check(!(await dave.page.evaluate(has, 'missed 1')), 'nothing arrives while cut');
  await shot(dave.page, 'reconnect-cut');
  await control('restore');

  // The SDK's backoff is at most 20 s by default.
  await dave.page.waitForSelector('#state.connected', { timeout: 30000 });
  await dave.page.waitForFunction(has, 'missed 3', T);
  const shown = await texts(dave.page);
  report.recovered = shown.slice(shown.indexOf('before the cut') + 1);
  await carol.page.fill('#text', 'after');
  await carol.page.click('#send');
  await dave.page.waitForFunction(has, 'after', T);
  check((await texts(dave.page)).filter((t) => t.startsWith('missed')).length === 3, 'each missed message once');
  await shot(dave.page, 'reconnect-recovered');
  await browser.close();
  return report;
});
