// The official JavaScript SDK (npm `centrifuge` 5.x, with `ws`) on Node over
// `wss://`: connects, subscribes to a channel, publishes into it from the
// client and receives that publication back. Node trusts the test CA only
// through NODE_EXTRA_CA_CERTS, which the harness (tests/tls.rs) sets or not.
//
// Environment:
//   HERALD_WSS            wss://localhost:port/connection/websocket
//   HERALD_NODE_MODULES   the node_modules holding `centrifuge` and `ws`
//   HERALD_TOKEN          the connection token
//   HERALD_CHANNEL        a channel the user may subscribe and publish to
//   HERALD_TIMEOUT_MS     how long to wait for each step
//
// Its last stdout line is the report: {"ok":true,"received":<data>,...} and
// exit 0, or {"ok":false,"error":...} and exit 1.

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

const TIMEOUT_MS = Number(env('HERALD_TIMEOUT_MS'));
const CHANNEL = env('HERALD_CHANNEL');

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const client = new Centrifuge(env('HERALD_WSS'), {
  websocket: WebSocket,
  token: env('HERALD_TOKEN'),
});
let transportError = null;
client.on('error', (ctx) => {
  transportError = ctx.error ? `${ctx.error.code}: ${ctx.error.message}` : JSON.stringify(ctx);
});

try {
  const connected = within(new Promise((resolve) => client.once('connected', resolve)), 'connected');
  client.connect();
  const ctx = await connected;
  const sub = client.newSubscription(CHANNEL);
  const publication = new Promise((resolve) => sub.on('publication', resolve));
  const subscribed = within(new Promise((resolve) => sub.once('subscribed', resolve)), 'subscribed');
  sub.subscribe();
  await subscribed;
  const sent = { over: 'wss', n: 1 };
  await within(sub.publish(sent), 'publish');
  const got = await within(publication, 'publication');
  client.disconnect();
  console.log(JSON.stringify({ ok: true, client: ctx.client, transport: ctx.transport, received: got.data }));
  process.exit(0);
} catch (e) {
  client.disconnect();
  console.log(JSON.stringify({ ok: false, error: String(e.message || e), transport_error: transportError }));
  process.exit(1);
}
