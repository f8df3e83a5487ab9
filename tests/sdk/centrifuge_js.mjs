// Drives Herald with the unmodified official JavaScript SDK (npm `centrifuge`
// 5.x) on Node, the way an application would, and checks what the SDK reports.
//
// Run by tests/sdk.rs, which starts the server (Herald, or Centrifugo for the
// conformance run: nothing here is Herald-only) and passes, in the environment:
//   HERALD_WS              ws://host:port/connection/websocket (bob)
//   HERALD_WS_CUTTABLE     the same through a TCP proxy the harness can cut (alice)
//   HERALD_NODE_MODULES    the node_modules holding `centrifuge` and `ws`
//   HERALD_TOKEN_SHORT     alice's first connection token, valid a few seconds
//   HERALD_TOKEN           alice's token returned by getToken (refresh)
//   HERALD_TOKEN_PUBLISHER bob's token (the other client publishing)
//   HERALD_API             http://host:port/api (the server API)
//   HERALD_API_KEY         its key
//   HERALD_CHANNEL         a history channel, empty at start
//   HERALD_FORBIDDEN_CHANNEL a channel alice may not subscribe to (error 103)
//   HERALD_MISSED          how many publications alice misses while offline
//   HERALD_SDK_DEBUG=1     the SDK's debug log on stderr
//   HERALD_TRANSPORTS      optional, e.g. `http_stream,sse`: alice connects over these
//                          bidirectional-emulation transports (the SDK's `transports`
//                          list, tried in order; commands go to `/emulation`) instead of
//                          a WebSocket; the endpoints are HERALD_WS_CUTTABLE's host.
//                          Needs node's `--experimental-eventsource` for `sse`.
//   HERALD_PROTOBUF=1      use the SDK's Protobuf build (`centrifuge/build/protobuf`,
//                          WebSocket subprotocol `centrifuge-protobuf`): payloads are
//                          bytes, so the script sends JSON text as bytes and parses
//                          what it receives, as an application mixing encodings does
//
// Alice connects through the harness's cuttable proxy: the script prints
// {"control":"cut"} (every connection dropped, no WebSocket close frame, new
// ones refused) or {"control":"restore"} on stdout and waits for a line
// `done` on stdin. Her network stays down while the backend publishes through
// the server API; the SDK notices and reconnects by itself.
//
// Its last stdout line is the report: {"ok":true,...} and exit 0, or
// {"ok":false,"error":...} and exit 1.

import path from 'node:path';
import { createRequire } from 'node:module';
import readline from 'node:readline';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
};

const require = createRequire(path.join(env('HERALD_NODE_MODULES'), 'noop.js'));
const PROTOBUF = process.env.HERALD_PROTOBUF === '1';
const { Centrifuge } = require(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge');
const WebSocket = require('ws');

const WS = env('HERALD_WS');
const CHANNEL = env('HERALD_CHANNEL');
const MISSED = Number(env('HERALD_MISSED'));
const DEBUG = process.env.HERALD_SDK_DEBUG === '1';
const STEP_TIMEOUT_MS = 8000;

class Failure extends Error {}

/** A payload as the SDK takes it: JSON bytes in the Protobuf build. */
const out = (v) => (PROTOBUF ? new TextEncoder().encode(JSON.stringify(v)) : v);
/** A received payload as a JSON value. */
const dataOf = (d) => (PROTOBUF ? JSON.parse(new TextDecoder().decode(d)) : d);

function check(cond, what, details) {
  if (!cond) {
    throw new Failure(`${what}${details === undefined ? '' : ': ' + JSON.stringify(details)}`);
  }
}

function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, what, { expected, actual });
}

/** Resolves when `cond()` holds; polls, bounded by STEP_TIMEOUT_MS. */
async function until(what, cond) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the harness to `cut` or `restore` alice's network; resolves once done. */
async function network(action) {
  process.stdout.write(JSON.stringify({ control: action }) + '\n');
  const { value, done } = await stdinLines.next();
  check(!done && value === 'done', `the harness confirms ${action}`, value);
}

/** Publishes through the server API; returns the offset it answers. */
async function apiPublish(data) {
  const resp = await fetch(`${env('HERALD_API')}/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': env('HERALD_API_KEY') },
    body: JSON.stringify({ channel: CHANNEL, data }),
  });
  const body = await resp.json();
  check(resp.ok && body.result, 'server API publish', { status: resp.status, body });
  return body.result.offset;
}

function plainPub(ctx) {
  return {
    offset: ctx.offset,
    data: dataOf(ctx.data),
    user: ctx.info ? ctx.info.user : undefined,
  };
}

/** Alice's endpoint and transport options: a WebSocket, or the emulation
 * transports of HERALD_TRANSPORTS on the same host. */
function aliceTransport() {
  const ws = env('HERALD_WS_CUTTABLE');
  const names = (process.env.HERALD_TRANSPORTS || '').split(',').filter((t) => t !== '');
  if (names.length === 0) {
    return [ws, { websocket: WebSocket }];
  }
  const base = ws.replace(/^ws/, 'http').replace(/\/connection\/websocket$/, '');
  const transports = names.map((t) => ({ transport: t, endpoint: `${base}/connection/${t}` }));
  return [transports, {
    emulationEndpoint: `${base}/emulation`,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
    eventsource: globalThis.EventSource,
  }];
}

async function main() {
  let getTokenCalls = 0;
  let aliceTransportName = null;
  const [aliceEndpoint, aliceOptions] = aliceTransport();
  const alice = new Centrifuge(aliceEndpoint, {
    ...aliceOptions,
    token: env('HERALD_TOKEN_SHORT'),
    getToken: async () => {
      getTokenCalls += 1;
      return env('HERALD_TOKEN');
    },
    minReconnectDelay: 100,
    maxReconnectDelay: 400,
    timeout: 5000,
    debug: DEBUG,
  });
  const bob = new Centrifuge(WS, {
    websocket: WebSocket,
    token: env('HERALD_TOKEN_PUBLISHER'),
    debug: DEBUG,
  });

  const connecting = [];
  const errors = [];
  const subscribed = [];
  const pubs = [];
  alice.on('connecting', (ctx) => connecting.push({ code: ctx.code, reason: ctx.reason }));
  alice.on('connected', (ctx) => { aliceTransportName = ctx.transport; });
  alice.on('error', (ctx) => errors.push({ type: ctx.type, error: ctx.error }));
  alice.on('disconnected', (ctx) => errors.push({ type: 'disconnected', error: ctx }));

  const sub = alice.newSubscription(CHANNEL);
  sub.on('subscribed', (ctx) => subscribed.push(ctx));
  sub.on('publication', (ctx) => pubs.push(plainPub(ctx)));
  sub.on('error', (ctx) => errors.push({ type: `sub:${ctx.type}`, error: ctx.error }));
  sub.on('unsubscribed', (ctx) => errors.push({ type: 'unsubscribed', error: ctx }));

  try {
    // 1–2. Connect with a token and subscribe to a history channel.
    alice.connect();
    bob.connect();
    sub.subscribe();
    await sub.ready(STEP_TIMEOUT_MS);
    await bob.ready(STEP_TIMEOUT_MS);
    eq(subscribed.length, 1, 'one subscribed event');
    const first = subscribed[0];
    eq(first.recoverable, true, 'history channel is recoverable');
    eq(first.wasRecovering, false, 'first subscribe is not a recovery');
    check(first.streamPosition !== undefined, 'subscribed carries a stream position', first);
    eq(first.streamPosition.offset, 0, 'empty channel starts at offset 0');

    // 2b. A channel alice may not subscribe to: the subscription ends with 103.
    const forbiddenChannel = env('HERALD_FORBIDDEN_CHANNEL');
    const forbidden = alice.newSubscription(forbiddenChannel);
    const forbiddenEnds = [];
    forbidden.on('unsubscribed', (ctx) => forbiddenEnds.push(ctx));
    forbidden.on('subscribed', (ctx) => forbiddenEnds.push({ subscribed: ctx }));
    forbidden.subscribe();
    await until('the forbidden subscription ends', () => forbiddenEnds.length >= 1);
    eq(forbiddenEnds.map((e) => e.code), [103], 'forbidden channel: unsubscribed with 103 (permission denied)');
    eq(forbidden.state, 'unsubscribed', 'forbidden subscription state');
    alice.removeSubscription(forbidden);

    // 3. Publications by someone else arrive with offsets 1, 2, 3.
    for (let i = 0; i < 3; i++) {
      await bob.publish(CHANNEL, out({ from: 'bob', i }));
    }
    await until('3 publications from bob', () => pubs.length >= 3);
    eq(pubs.slice(0, 3), [1, 2, 3].map((offset, i) => ({ offset, data: { from: 'bob', i }, user: 'bob' })),
      'bob\'s publications as alice sees them');

    // 4. Publish from the SDK; history by limit, since and reverse.
    const published = await sub.publish(out({ from: 'alice' }));
    check(published !== null && typeof published === 'object', 'publish resolves', published);
    await until('alice\'s own publication', () => pubs.length >= 4);
    eq(pubs[3], { offset: 4, data: { from: 'alice' }, user: 'alice' }, 'alice\'s own publication');

    const all = await sub.history({ limit: 10 });
    eq(all.publications.map((p) => p.offset), [1, 2, 3, 4], 'history limit 10');
    eq(all.publications.map((p) => dataOf(p.data)), [0, 1, 2].map((i) => ({ from: 'bob', i })).concat([{ from: 'alice' }]),
      'history data');
    eq(all.publications[0].info && all.publications[0].info.user, 'bob', 'history carries publisher info');
    eq(all.offset, 4, 'history stream top');
    check(typeof all.epoch === 'string' && all.epoch.length > 0, 'history epoch', all.epoch);
    const epoch = all.epoch;
    const top = await sub.history({ limit: 0 });
    eq([top.publications.length, top.offset, top.epoch], [0, 4, epoch], 'history limit 0: position only');
    const since = await sub.history({ limit: 2, since: { offset: 1, epoch } });
    eq(since.publications.map((p) => p.offset), [2, 3], 'history since offset 1, limit 2');
    const newest = await sub.history({ limit: 2, reverse: true });
    eq(newest.publications.map((p) => p.offset), [4, 3], 'history reverse, limit 2');
    const before = await sub.history({ limit: 2, since: { offset: 4, epoch }, reverse: true });
    eq(before.publications.map((p) => p.offset), [3, 2], 'history reverse since offset 4, limit 2');
    let wrongEpoch = null;
    try {
      await sub.history({ limit: 2, since: { offset: 1, epoch: 'not-' + epoch } });
    } catch (e) {
      wrongEpoch = e;
    }
    eq(wrongEpoch && wrongEpoch.code, 112, 'history since a position of another epoch is unrecoverable');

    // 1 (refresh). The first token is short-lived: the SDK asks getToken for a
    // new one and refreshes the connection without reconnecting.
    await until('getToken called for a refresh', () => getTokenCalls >= 1);
    const afterRefresh = await sub.history({ limit: 0 });
    eq(afterRefresh.offset, 4, 'connection works after the refresh');
    eq(connecting.map((c) => c.code), [0], 'no reconnect so far (only the initial connect)');

    // 5. Cut alice's network; the backend publishes through the server API
    // while she is away; the SDK reconnects on its own and recovers exactly
    // what she missed.
    const before_drop = pubs.length;
    await network('cut');
    await until('alice notices the drop', () => connecting.length >= 2 && sub.state === 'subscribing');
    for (let i = 0; i < MISSED; i++) {
      eq(await apiPublish({ missed: i }), 5 + i, 'server API publish offset');
    }
    eq(pubs.length, before_drop, 'nothing reaches alice while her network is down');
    await network('restore');
    await until('resubscribed', () => subscribed.length >= 2);
    const rec = subscribed[1];
    eq([rec.wasRecovering, rec.recovered, rec.hasRecoveredPublications], [true, true, true],
      'resubscribe recovered the missed publications');
    // The reply's offset is server-specific (the harness checks it): Herald sends
    // the stream top, Centrifugo the position recovered from.
    eq(rec.streamPosition.epoch, epoch, 'same epoch after recovery');
    await until(`${MISSED} recovered publications`, () => pubs.length >= 4 + MISSED);

    // Then live ones again.
    await bob.publish(CHANNEL, out({ live: 0 }));
    eq(await apiPublish({ live: 1 }), 6 + MISSED, 'server API publish offset');
    await until('2 live publications after recovery', () => pubs.length >= 6 + MISSED);
    await new Promise((r) => setTimeout(r, 100));

    const missed = pubs.slice(4, 4 + MISSED);
    eq(missed.map((p) => p.offset), Array.from({ length: MISSED }, (_, i) => 5 + i), 'recovered offsets');
    eq(missed.map((p) => [p.data, p.user]), Array.from({ length: MISSED }, (_, i) => [{ missed: i }, undefined]),
      'recovered data (server API publications carry no client info)');
    eq(pubs.slice(4 + MISSED),
      [{ offset: 5 + MISSED, data: { live: 0 }, user: 'bob' }, { offset: 6 + MISSED, data: { live: 1 }, user: undefined }],
      'live after recovery');
    eq(pubs.map((p) => p.offset), Array.from({ length: 6 + MISSED }, (_, i) => i + 1),
      'every offset once, in order');
    eq(connecting.map((c) => c.code), [0, 1], 'connecting events: initial connect, then transport closed');
    eq(errors.filter((e) => e.type !== 'transport'), [], 'no errors but the transport ones of the drop');

    return {
      ok: true,
      transport: aliceTransportName,
      offsets: pubs.map((p) => p.offset),
      epoch,
      get_token_calls: getTokenCalls,
      forbidden: { channel: forbiddenChannel, code: forbiddenEnds[0].code },
      first_position: first.streamPosition,
      connecting,
      recovery: {
        was_recovering: rec.wasRecovering,
        recovered: rec.recovered,
        has_recovered_publications: rec.hasRecoveredPublications,
        offset: rec.streamPosition.offset,
      },
    };
  } finally {
    alice.disconnect();
    bob.disconnect();
  }
}

const guard = setTimeout(() => {
  process.stdout.write(JSON.stringify({ ok: false, error: 'script timed out' }) + '\n');
  process.exit(1);
}, 25000);

try {
  const report = await main();
  process.stdout.write(JSON.stringify(report) + '\n');
  clearTimeout(guard);
  process.exit(0);
} catch (e) {
  // The SDK rejects with plain objects ({code, message}), not Errors.
  const error = e instanceof Failure ? e.message : e instanceof Error ? String(e.stack) : JSON.stringify(e);
  process.stdout.write(JSON.stringify({ ok: false, error }) + '\n');
  process.exit(1);
}
