// Presence, join/leave and the user status RPC through the unmodified
// official JavaScript SDK (npm `centrifuge`) on Node, with alice and bob on
// two different nodes.
//
// Run by tests/presence.rs, which passes in the environment:
//   HERALD_NODE_MODULES  the node_modules holding `centrifuge` and `ws`
//   HERALD_WS_A          ws://host:port/connection/websocket of node A (alice)
//   HERALD_WS_B          the same of node B (bob)
//   HERALD_TOKEN_ALICE, HERALD_TOKEN_BOB  connection tokens
//   HERALD_CHANNEL       a channel of a namespace with presence and join_leave
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

/// Resolves with the first event `name` of `emitter` for which `pred` holds.
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
  const ctx = await within(ready, `connect to ${url}`);
  return [c, ctx.client];
}

async function main() {
  const report = {};
  const [alice] = await connected(env('HERALD_WS_A'), env('HERALD_TOKEN_ALICE'));
  const aliceSub = alice.newSubscription(CHANNEL, { joinLeave: true });
  aliceSub.subscribe();
  await within(aliceSub.ready(), 'alice subscribed');

  const [bob, bobClient] = await connected(env('HERALD_WS_B'), env('HERALD_TOKEN_BOB'));
  const bobJoined = next(aliceSub, 'join', (ctx) => ctx.info.user === 'bob');
  const bobSub = bob.newSubscription(CHANNEL, { joinLeave: true });
  bobSub.subscribe();
  await within(bobSub.ready(), 'bob subscribed');
  const join = await within(bobJoined, 'alice sees bob join');
  check(join.info.client === bobClient, 'join names bob\'s client', join);
  report.join = join.info.user;

  // Presence from alice's node includes bob on the other one.
  let presence;
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    presence = await aliceSub.presence();
    const users = Object.values(presence.clients).map((i) => i.user).sort();
    if (JSON.stringify(users) === JSON.stringify(['alice', 'bob'])) break;
    check(Date.now() < deadline, 'presence holds alice and bob', presence);
    await new Promise((r) => setTimeout(r, 50));
  }
  check(presence.clients[bobClient].user === 'bob', 'presence keyed by client id', presence);
  report.presence = Object.keys(presence.clients).length;
  const stats = await bobSub.presenceStats();
  check(stats.numClients === 2 && stats.numUsers === 2, 'presence stats', stats);
  report.stats = stats;
  const top = await alice.presenceStats(CHANNEL);
  check(top.numClients === 2, 'client-level presence stats', top);

  const rpc = await alice.rpc('herald.user_status', { users: ['bob', 'nobody'] });
  const statuses = rpc.data.statuses;
  check(statuses[0].user === 'bob' && statuses[0].online === true, 'bob online', rpc.data);
  check(statuses[1].online === false, 'nobody offline', rpc.data);
  report.rpc = statuses.map((s) => s.online);

  const bobLeft = next(aliceSub, 'leave', (ctx) => ctx.info.client === bobClient);
  bobSub.unsubscribe();
  await within(bobLeft, 'alice sees bob leave');
  report.leave = 'bob';

  bob.disconnect();
  alice.disconnect();
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
