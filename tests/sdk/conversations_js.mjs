// IM conversations through the unmodified official JavaScript SDK (npm
// `centrifuge`) on Node, with only `client.rpc` and the client `message`
// event: alice on two devices (one per node), bob writing to her.
//
// Run by tests/conversations.rs, which passes in the environment:
//   HERALD_NODE_MODULES  the node_modules holding `centrifuge` and `ws`
//   HERALD_WS_A          ws://host:port/connection/websocket of node A
//   HERALD_WS_B          the same of node B
//   HERALD_TOKEN_ALICE, HERALD_TOKEN_BOB  connection tokens
//   HERALD_CHANNEL       alice's and bob's one-to-one channel (dm:#alice,bob)
//
// Its last stdout line is the report: {"ok":true,...} and exit 0, or
// {"ok":false,"error":...} and exit 1.

import path from 'node:path';
import { createRequire } from 'node:module';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
};

const require = createRequire(path.join(env('HERALD_NODE_MODULES'), 'noop.js'));
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const CHANNEL = env('HERALD_CHANNEL');
const STEP_TIMEOUT_MS = 10000;

function check(cond, what, details) {
  if (!cond) {
    throw new Error(`${what}${details === undefined ? '' : ': ' + JSON.stringify(details)}`);
  }
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function next(emitter, name, pred) {
  return new Promise((resolve) => {
    const handler = (ctx) => {
      if (pred(ctx)) {
        emitter.removeListener(name, handler);
        resolve(ctx);
      }
    };
    emitter.on(name, handler);
  });
}

async function connected(url, token) {
  const c = new Centrifuge(url, { websocket: WebSocket, token });
  const ready = next(c, 'connected', () => true);
  c.connect();
  await within(ready, `connect to ${url}`);
  return c;
}

async function main() {
  const report = {};
  const phone = await connected(env('HERALD_WS_A'), env('HERALD_TOKEN_ALICE'));
  const laptop = await connected(env('HERALD_WS_B'), env('HERALD_TOKEN_ALICE'));
  const bob = await connected(env('HERALD_WS_A'), env('HERALD_TOKEN_BOB'));

  await within(bob.publish(CHANNEL, { text: 'hi' }), 'bob publishes');
  const second = await within(bob.publish(CHANNEL, { text: 'there' }), 'bob publishes again');
  report.offset = second.offset;

  report.unreadBefore = (await within(laptop.rpc('herald.unread', {}), 'unread')).data;

  const marker = next(laptop, 'message', (ctx) => ctx.data && ctx.data.herald === 'marker');
  report.read = (await within(phone.rpc('herald.read', { channel: CHANNEL, offset: 2 }), 'read')).data;
  report.marker = (await within(marker, 'the laptop hears of the read')).data;

  report.unreadAfter = (await within(laptop.rpc('herald.unread', {}), 'unread again')).data;
  const list = (await within(laptop.rpc('herald.conversations', { limit: 10 }), 'conversations')).data;
  report.conversations = list.conversations.map((c) => c.channel);
  check(list.conversations[0].last.data.text === 'there', 'last message', list);

  let code;
  try {
    await phone.rpc('herald.read', { channel: CHANNEL, offset: -1 });
  } catch (e) {
    code = e.code;
  }
  check(code === 107, 'a negative offset is 107', code);

  phone.disconnect();
  laptop.disconnect();
  bob.disconnect();
  return report;
}

main().then(
  (report) => {
    console.log(JSON.stringify({ ok: true, ...report }));
    process.exit(0);
  },
  (e) => {
    console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e) }));
    process.exit(1);
  },
);
