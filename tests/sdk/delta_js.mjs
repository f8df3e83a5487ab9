// Delta compression with the unmodified official JavaScript SDK (npm
// `centrifuge` 5.x) on Node: a subscription with `delta: 'fossil'` must see
// exactly what was published, live and after a reconnect that recovers, and
// the bytes its connection receives are counted against a subscription
// without delta on the same stream.
//
// Run by tests/sdk.rs against Herald and against Centrifugo (nothing here is
// Herald-only), with in the environment:
//   HERALD_WS           ws://host:port/connection/websocket
//   HERALD_NODE_MODULES the node_modules holding `centrifuge` and `ws`
//   HERALD_TOKEN        a connection token
//   HERALD_API          http://host:port/api (the server API)
//   HERALD_API_KEY      its key
//   HERALD_CHANNEL      a channel of a namespace allowing fossil deltas, empty
//   HERALD_TICKS        how many state publications to stream
//   HERALD_PROTOBUF=1   use the SDK's Protobuf build
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
const PROTOBUF = process.env.HERALD_PROTOBUF === '1';
const { Centrifuge } = require(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge');
const WebSocket = require('ws');

const TICKS = Number(env('HERALD_TICKS'));
const STEP_TIMEOUT_MS = 8000;

class Failure extends Error {}

function check(cond, what, details) {
  if (!cond) {
    throw new Failure(`${what}${details === undefined ? '' : ': ' + JSON.stringify(details)}`);
  }
}

async function until(what, cond) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A realistic state object (~1.3 KB) of which each tick changes a few
 *  fields: the tick, one player's position, another's health. */
function state(tick) {
  const players = [];
  for (let i = 0; i < 24; i++) {
    const moving = i === tick % 24;
    const hurt = i === (tick + 5) % 24;
    players.push({
      hp: 100 - (hurt ? tick % 7 : 0),
      id: i,
      name: `player-${i}`,
      x: moving ? (i * 37 + tick * 5) % 1000 : i * 37,
      y: moving ? (i * 91 + tick * 3) % 1000 : i * 91,
    });
  }
  return { game: 'g1', players, status: 'running', tick };
}

async function apiPublish(channel, data) {
  const resp = await fetch(`${env('HERALD_API')}/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': env('HERALD_API_KEY') },
    body: JSON.stringify({ channel, data }),
  });
  const body = await resp.json();
  check(resp.ok && body.result, 'server API publish', { status: resp.status, body });
}

/** A WebSocket class counting the bytes of every message it receives. */
function countingWebSocket(counter) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data) => {
        counter.bytes += data.byteLength;
        counter.messages += 1;
      });
    }
  };
}

const dataOf = (d) => (PROTOBUF ? JSON.parse(new TextDecoder().decode(d)) : d);

/** Streams TICKS states into `channel` to a subscription asking for `delta`. */
async function stream(channel, delta) {
  const counter = { bytes: 0, messages: 0 };
  const client = new Centrifuge(env('HERALD_WS'), {
    websocket: countingWebSocket(counter),
    token: env('HERALD_TOKEN'),
    minReconnectDelay: 100,
    maxReconnectDelay: 400,
    timeout: 5000,
  });
  const seen = [];
  const errors = [];
  const opts = delta ? { delta: 'fossil' } : {};
  const sub = client.newSubscription(channel, opts);
  sub.on('publication', (ctx) => seen.push({ offset: ctx.offset, data: dataOf(ctx.data) }));
  sub.on('error', (ctx) => errors.push(String(ctx.error && ctx.error.message)));
  client.connect();
  sub.subscribe();
  await sub.ready(STEP_TIMEOUT_MS);
  const before = counter.bytes;
  for (let tick = 1; tick <= TICKS; tick++) {
    await apiPublish(channel, state(tick));
    await until(`tick ${tick}`, () => seen.length >= tick);
  }
  const liveBytes = counter.bytes - before;
  for (let tick = 1; tick <= TICKS; tick++) {
    check(JSON.stringify(seen[tick - 1].data) === JSON.stringify(state(tick)), `tick ${tick} as published`,
      seen[tick - 1]);
  }

  let recovery = null;
  if (delta) {
    // Off, three publications missed, on again: the SDK recovers them, then live.
    client.disconnect();
    for (let tick = TICKS + 1; tick <= TICKS + 3; tick++) {
      await apiPublish(channel, state(tick));
    }
    const subscribed = [];
    sub.on('subscribed', (ctx) => subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
    client.connect();
    await until('resubscribed', () => subscribed.length >= 1);
    await until('the missed publications', () => seen.length >= TICKS + 3);
    for (let tick = TICKS + 4; tick <= TICKS + 5; tick++) {
      await apiPublish(channel, state(tick));
      await until(`tick ${tick}`, () => seen.length >= tick);
    }
    for (let tick = TICKS + 1; tick <= TICKS + 5; tick++) {
      check(JSON.stringify(seen[tick - 1].data) === JSON.stringify(state(tick)), `tick ${tick} after recovery`,
        seen[tick - 1]);
    }
    recovery = { subscribed, offsets: seen.slice(TICKS).map((p) => p.offset) };
  }
  client.disconnect();
  check(errors.length === 0, 'no subscription error', errors);
  return { live_bytes: liveBytes, messages: counter.messages, seen: seen.length, recovery };
}

async function main() {
  try {
    const channel = env('HERALD_CHANNEL');
    const plain = await stream(`${channel}-plain`, false);
    const delta = await stream(`${channel}-delta`, true);
    const stateBytes = JSON.stringify(state(1)).length;
    process.stdout.write(JSON.stringify({ ok: true, ticks: TICKS, state_bytes: stateBytes, plain, delta }) + '\n');
    process.exit(0);
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack || e) }) + '\n');
    process.exit(1);
  }
}

main();
