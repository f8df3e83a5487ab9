// Herald admin console: plain DOM, no external resources. Every call goes to
// /admin/api/… with the HttpOnly session cookie; POSTs carry the session's
// anti-CSRF value in X-Herald-CSRF.
'use strict';

const $ = (s) => document.querySelector(s);
const PAGES = ['overview', 'channels', 'users', 'publish', 'charts'];
const HISTORY_PAGE = 20;
let csrf = '';
let timer = null;

class LoggedOut extends Error {}

async function get(path) {
  const r = await fetch(path, { credentials: 'same-origin' });
  if (r.status === 401) throw new LoggedOut();
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return path.endsWith('/metrics') ? r.text() : r.json();
}

// A server API method; resolves to its result, throws its error.
async function call(method, body) {
  const r = await fetch(`/admin/api/call/${method}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-Herald-CSRF': csrf },
    body: JSON.stringify(body || {}),
  });
  if (r.status === 401) throw new LoggedOut();
  const reply = await r.json();
  if (reply.error) throw new Error(`${method}: ${reply.error.message} (${reply.error.code})`);
  return reply.result;
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  e.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (typeof c === 'object' ? c : String(c))));
  return e;
}

function card(title, pairs, extra) {
  const dl = el('dl');
  for (const [k, v] of pairs) dl.append(el('dt', {}, k), el('dd', {}, v));
  return el('div', { className: 'card' }, el('h2', {}, title), dl, extra);
}

function table(headers, rows) {
  const t = el('table');
  t.append(el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', {}, h)))));
  t.append(el('tbody', {}, ...rows.map((r) => el('tr', {}, ...r.map((c) => el('td', {}, c))))));
  return t;
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? `${d}d ` : '') + (d || h ? `${h}h ` : '') + `${m}m ${s % 60}s`;
}

function status(ok, text) {
  return el('span', { className: ok ? 'ok' : 'bad' }, text);
}

// ---- login

function showLogin() {
  clearInterval(timer);
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#password').focus();
}

async function start() {
  try {
    csrf = (await get('/admin/api/session')).csrf;
  } catch (e) {
    showLogin();
    return;
  }
  $('#login').hidden = true;
  $('#app').hidden = false;
  route();
}

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('#login-error').textContent = '';
  const r = await fetch('/admin/login', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password: $('#password').value }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    $('#login-error').textContent = body.error ? body.error.message : `HTTP ${r.status}`;
    return;
  }
  $('#password').value = '';
  start();
});

$('#logout').addEventListener('click', async () => {
  await fetch('/admin/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Herald-CSRF': csrf } });
  showLogin();
});

// ---- pages

function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'overview';
  for (const p of PAGES) {
    $(`#page-${p}`).hidden = p !== page;
    document.querySelector(`a[data-page="${p}"]`).setAttribute('aria-current', p === page ? 'page' : 'false');
  }
  clearInterval(timer);
  const guard = (f) => () => f().catch((e) => (e instanceof LoggedOut ? showLogin() : console.warn(e)));
  if (page === 'overview') {
    const f = guard(overview);
    f();
    timer = setInterval(f, 5000);
  } else if (page === 'charts') {
    const f = guard(sampleCharts);
    f();
    timer = setInterval(f, 2000);
  }
}
window.addEventListener('hashchange', route);

async function overview() {
  const o = await get('/admin/api/overview');
  const n = o.node;
  const cards = [
    card(`Node ${n.host}`, [
      ['role', n.role], ['version', n.version], ['uptime', duration(n.uptime)],
      ['connections', n.stats.num_clients], ['users', n.stats.num_users],
      ['channels', n.stats.num_channels], ['subscriptions', n.stats.num_subs],
      ['edge id', n.edge_id],
    ]),
    card('NATS', [
      ['state', status(o.nats.state === 'connected', o.nats.state)],
      ['server', o.nats.server_name], ['version', o.nats.version],
      ['JetStream', status(o.nats.jetstream, o.nats.jetstream ? 'on' : 'off')],
    ]),
  ];
  const w = o.writers;
  if (w.error) {
    cards.push(card('Writers', [['error', status(false, w.error)]]));
  } else {
    const hosts = new Map(w.members.map((m) => [m.id, m.host]));
    cards.push(card(`Writers (${w.members.length})`, w.members.map((m) => [m.host, `${m.id.slice(0, 8)}… since ${new Date(m.started).toLocaleString()}`]),
      table(['Partition', 'Owner'], w.leases.map((l) => [l.partition, `${hosts.get(l.holder) || '?'} (${l.holder.slice(0, 8)}…)`]))));
  }
  const g = o.ingest;
  if (g.error) {
    cards.push(card('Ingest', [['error', status(false, g.error)]]));
  } else {
    const backlog = g.consumers.reduce((s, c) => s + (c.pending || 0) + (c.ack_pending || 0), 0);
    cards.push(card('Ingest stream', [['messages', g.messages], ['bytes', g.bytes], ['backlog', backlog]],
      table(['Partition', 'Pending', 'Unacked', 'Retried'],
        g.consumers.map((c) => (c.error ? [c.partition, c.error, '', ''] : [c.partition, c.pending, c.ack_pending, c.redelivered])))));
  }
  cards.push(card('Sync and store', [
    ['a history read', o.store.ok ? status(true, `answered in ${o.store.ms} ms`) : status(false, o.store.error)],
  ]));
  $('#overview').replaceChildren(...cards);
}

// ---- channels

const history = { channel: '', epoch: '', head: 0, first: 0, last: 0 };

$('#channel-form').addEventListener('submit', (e) => {
  e.preventDefault();
  lookupChannel($('#channel').value.trim()).catch(shown('#channel-info'));
});

function shown(where) {
  return (e) => {
    if (e instanceof LoggedOut) return showLogin();
    $(where).replaceChildren(el('p', { className: 'error', role: 'alert' }, String(e.message || e)));
  };
}

async function lookupChannel(channel) {
  const top = await call('history', { channel, limit: 0 });
  const local = await get(`/admin/api/local?channel=${encodeURIComponent(channel)}`);
  const cards = [card(channel, [['head (offset)', top.offset], ['epoch', top.epoch || '—'], [`subscribers on ${local.node}`, local.subscribers]])];
  try {
    const stats = await call('presence_stats', { channel });
    const presence = await call('presence', { channel });
    const rows = Object.values(presence.presence).map((p) => [p.user, p.client]);
    cards.push(card('Presence', [['clients', stats.num_clients], ['users', stats.num_users]], table(['User', 'Client'], rows)));
  } catch (e) {
    cards.push(card('Presence', [['', String(e.message)]]));
  }
  $('#channel-info').replaceChildren(...cards);
  Object.assign(history, { channel, epoch: top.epoch, head: top.offset });
  $('#history').hidden = false;
  await page({ reverse: true });
}

// One history page: {reverse, since?}; shown oldest first.
async function page(opts) {
  const body = { channel: history.channel, limit: HISTORY_PAGE, reverse: !!opts.reverse };
  if (opts.since) body.since = { offset: opts.since, epoch: history.epoch };
  const res = await call('history', body);
  const pubs = res.publications.slice().sort((a, b) => a.offset - b.offset);
  history.epoch = res.epoch;
  history.head = res.offset;
  if (pubs.length) {
    history.first = pubs[0].offset;
    history.last = pubs[pubs.length - 1].offset;
  }
  $('#h-range').textContent = pubs.length ? `offsets ${history.first}–${history.last} of ${history.head}` : 'no publications here';
  $('#h-rows').replaceChildren(...pubs.map((p) => el('tr', { }, el('td', {}, p.offset),
    el('td', {}, (p.info && p.info.user) || 'server'), el('td', {}, el('code', {}, JSON.stringify(p.data))))));
}

const pager = (f) => () => f().catch(shown('#channel-info'));
$('#h-newest').addEventListener('click', pager(() => page({ reverse: true })));
$('#h-oldest').addEventListener('click', pager(() => page({ reverse: false })));
$('#h-older').addEventListener('click', pager(() => page({ reverse: true, since: history.first })));
$('#h-newer').addEventListener('click', pager(() => page({ reverse: false, since: history.last })));

// ---- users

$('#user-form').addEventListener('submit', (e) => {
  e.preventDefault();
  lookupUser($('#user').value.trim()).catch(shown('#user-info'));
});

async function lookupUser(user) {
  const [st, unread, convs, local] = await Promise.all([
    call('user_status', { users: [user] }),
    call('unread', { user }),
    call('conversations', { user, limit: 50 }),
    get(`/admin/api/local?user=${encodeURIComponent(user)}`),
  ]);
  const s = st.statuses[0];
  const seen = s.last_seen ? new Date(s.last_seen).toLocaleString() : 'never';
  $('#user-info').replaceChildren(
    card(user, [['status', status(s.online, s.online ? 'online' : 'offline')], ['last seen', s.online ? 'now' : seen],
      [`connections on ${local.node}`, local.connections], ['unread', `${unread.total} in ${unread.conversations} conversations`]]),
    el('div', { className: 'card' }, el('h2', {}, 'Conversations'),
      table(['Channel', 'Head', 'Read', 'Unread'], convs.conversations.map((c) => [c.channel, c.head, c.read, c.unread]))),
  );
  $('#user-actions').hidden = false;
  $('#user-actions').dataset.user = user;
  $('#user-action-result').textContent = '';
}

async function userAction(what, method, body) {
  const out = $('#user-action-result');
  try {
    await call(method, body);
    out.textContent = what;
  } catch (e) {
    if (e instanceof LoggedOut) return showLogin();
    out.textContent = String(e.message);
  }
}

$('#disconnect').addEventListener('click', () => {
  const user = $('#user-actions').dataset.user;
  userAction(`sent: ${user}'s connections are closing on every node`, 'disconnect',
    { user, disconnect: { code: 3503, reason: 'disconnected by admin' } });
});

// invalidate_user_tokens: every token of the user issued before now stops
// working; the entry is kept until expire_at, the latest exp among them.
$('#revoke-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $('#user-actions').dataset.user;
  const hours = Number($('#revoke-hours').value);
  const expire_at = Math.floor(Date.now() / 1000) + Math.round(hours * 3600);
  userAction(`revoked: ${user}'s tokens issued until now no longer connect, and their connections close`,
    'invalidate_user_tokens', { user, expire_at });
});

// ---- publish

$('#publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('#publish-result');
  let data;
  try {
    data = JSON.parse($('#p-data').value);
  } catch (err) {
    out.textContent = `data is not JSON: ${err.message}`;
    return;
  }
  try {
    const r = await call('publish', { channel: $('#p-channel').value.trim(), data });
    out.textContent = r.offset ? `published at offset ${r.offset} (epoch ${r.epoch})` : 'published (no history in this channel)';
  } catch (err) {
    if (err instanceof LoggedOut) return showLogin();
    out.textContent = String(err.message);
  }
});

// ---- charts: rates from this node's Prometheus text

const SERIES = [
  { name: 'Messages in / s', metric: 'herald_edge_messages_in_total', rate: true },
  { name: 'Messages out / s', metric: 'herald_edge_messages_out_total', rate: true },
  { name: 'Publications stored / s', metric: 'herald_writer_sequenced_total', rate: true },
  { name: 'API requests / s', metric: 'herald_api_requests_total', rate: true },
  { name: 'Connects / s', metric: 'herald_edge_connects_total', rate: true },
  { name: 'Connections', metric: 'herald_edge_connections', rate: false },
];
const POINTS = 60;
const samples = SERIES.map(() => []);
let previous = null;

// Sums every sample of each metric (over its labels).
function parse(text) {
  const sums = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const name = line.split(/[{\s]/, 1)[0];
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) sums.set(name, (sums.get(name) || 0) + value);
  }
  return sums;
}

async function sampleCharts() {
  const now = { at: performance.now(), sums: parse(await get('/admin/api/metrics')) };
  SERIES.forEach((s, i) => {
    const v = now.sums.get(s.metric) || 0;
    let y = v;
    if (s.rate) {
      if (!previous) return;
      const dt = (now.at - previous.at) / 1000;
      y = Math.max(0, (v - (previous.sums.get(s.metric) || 0)) / dt);
    }
    samples[i].push(y);
    if (samples[i].length > POINTS) samples[i].shift();
  });
  previous = now;
  drawCharts();
}

function drawCharts() {
  const box = $('#charts');
  if (box.children.length !== SERIES.length) {
    box.replaceChildren(...SERIES.map((s) => el('div', { className: 'chart' },
      el('h2', {}, el('span', {}, s.name), el('span', { className: 'value' }, '…')),
      el('canvas', { width: 440, height: 120, role: 'img', ariaLabel: s.name }))));
  }
  SERIES.forEach((s, i) => {
    const node = box.children[i];
    const data = samples[i];
    const last = data.length ? data[data.length - 1] : 0;
    node.querySelector('.value').textContent = last >= 100 ? last.toFixed(0) : last.toFixed(1);
    const c = node.querySelector('canvas');
    const g = c.getContext('2d');
    g.clearRect(0, 0, c.width, c.height);
    const max = Math.max(1, ...data) * 1.15;
    g.strokeStyle = '#e2e5ec';
    g.beginPath();
    for (let k = 1; k < 4; k++) {
      g.moveTo(0, (c.height * k) / 4);
      g.lineTo(c.width, (c.height * k) / 4);
    }
    g.stroke();
    g.fillStyle = '#555e73';
    g.font = '11px system-ui';
    g.fillText(max.toFixed(max < 10 ? 1 : 0), 2, 11);
    g.strokeStyle = '#2f5bd3';
    g.lineWidth = 2;
    g.beginPath();
    data.forEach((y, k) => {
      const x = (c.width * k) / (POINTS - 1);
      const py = c.height - (y / max) * c.height;
      if (k) g.lineTo(x, py);
      else g.moveTo(x, py);
    });
    g.stroke();
  });
}

start();
