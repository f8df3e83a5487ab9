// Herald demo chat: the unmodified centrifuge-js browser bundle
// (window.Centrifuge) and Herald's conversation RPCs (herald.read,
// herald.delivered, herald.typing, herald.receipts, herald.conversations).
// Rooms are members-only channels the demo token endpoint joins everyone to;
// a DM is the user-limited channel dm:#a,b. Who is online comes from the
// lobby's presence and join/leave pushes; the app subscribes to the DM with
// every online user, so a new message reaches it without a reload.
'use strict';

const PAGE = 30; // history page
const TYPING_EVERY_MS = 1000; // the server lets one through per second
const TYPING_SHOWN_MS = 3000;

const $ = (s) => document.querySelector(s);
const state = {
  me: '',
  client: null,
  active: '',
  convs: new Map(), // channel -> conversation
  online: new Map(), // user -> Set of client ids (lobby presence)
  lastTyping: 0,
  lobby: '',
  joined: new Set(), // rooms this name joined with this page: marked read once
};

function dmChannel(a, b) {
  return 'dm:#' + [a, b].sort().join(',');
}

function titleOf(channel) {
  if (channel.startsWith('dm:#')) {
    return channel.slice(4).split(',').find((u) => u !== state.me) || state.me;
  }
  return '#' + channel.split(':').slice(1).join(':');
}

async function fetchToken(user) {
  const r = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : 'token refused');
  return body;
}

function conv(channel) {
  let c = state.convs.get(channel);
  if (c) return c;
  c = {
    channel,
    room: !channel.startsWith('dm:'),
    messages: new Map(), // offset -> {offset, user, text}
    epoch: '',
    oldest: 0, // smallest offset loaded from history
    loaded: false,
    head: 0,
    unread: 0,
    receipts: new Map(), // user -> {read, delivered}
    typing: new Map(), // user -> until (ms)
    sub: null,
  };
  state.convs.set(channel, c);
  const sub = state.client.newSubscription(channel);
  c.sub = sub;
  sub.on('publication', (ctx) => onPublication(c, ctx));
  sub.on('subscribed', (ctx) => {
    if (ctx.streamPosition) {
      c.epoch = ctx.streamPosition.epoch;
      c.head = Math.max(c.head, ctx.streamPosition.offset);
    }
    if (channel === state.lobby) refreshOnline();
  });
  sub.on('error', (ctx) => console.warn('subscription', channel, ctx.error));
  if (channel === state.lobby) {
    sub.on('join', (ctx) => setOnline(ctx.info.user, ctx.info.client, true));
    sub.on('leave', (ctx) => setOnline(ctx.info.user, ctx.info.client, false));
  }
  sub.subscribe();
  renderLists();
  return c;
}

function addMessage(c, p) {
  const info = p.info || {};
  c.messages.set(p.offset, {
    offset: p.offset,
    user: info.user || '',
    text: p.data && typeof p.data.text === 'string' ? p.data.text : JSON.stringify(p.data),
  });
  c.head = Math.max(c.head, p.offset);
}

function onPublication(c, ctx) {
  const fresh = !c.messages.has(ctx.offset);
  addMessage(c, ctx);
  const mine = ctx.info && ctx.info.user === state.me;
  if (fresh && !mine) {
    c.typing.delete(ctx.info && ctx.info.user);
    if (c.channel === state.active) {
      markRead(c);
    } else {
      c.unread += 1;
      rpc('herald.delivered', { channel: c.channel, offset: ctx.offset });
    }
  }
  renderLists();
  if (c.channel === state.active) renderChat(true);
}

async function rpc(method, data) {
  try {
    return (await state.client.rpc(method, data)).data;
  } catch (e) {
    console.warn(method, e);
    return null;
  }
}

async function markRead(c) {
  c.unread = 0;
  renderLists();
  if (c.head > 0) await rpc('herald.read', { channel: c.channel, offset: c.head });
}

function setOnline(user, client, on) {
  if (!user) return;
  const clients = state.online.get(user) || new Set();
  if (on) clients.add(client);
  else clients.delete(client);
  if (clients.size) state.online.set(user, clients);
  else state.online.delete(user);
  if (on && user !== state.me) conv(dmChannel(state.me, user));
  renderLists();
}

async function refreshOnline() {
  const c = state.convs.get(state.lobby);
  try {
    const res = await c.sub.presence();
    state.online.clear();
    for (const info of Object.values(res.clients)) setOnline(info.user, info.client, true);
  } catch (e) {
    console.warn('presence', e);
  }
  renderLists();
}

// The conversation list: unread counts after a (re)connect, and DMs with
// users who are offline now.
async function refreshConversations() {
  const list = await rpc('herald.conversations', { limit: 100 });
  if (!list) return;
  for (const item of list.conversations) {
    if (!item.channel.startsWith('dm:#') && !item.channel.startsWith('room:')) continue;
    const c = conv(item.channel);
    c.head = Math.max(c.head, item.head);
    c.unread = item.channel === state.active ? 0 : item.unread;
    // A room just joined starts read: its backlog is history, not news.
    if (state.joined.delete(item.channel)) markRead(c);
  }
  if (state.active) markRead(conv(state.active));
  renderLists();
}

function onMessage(data) {
  if (!data || !data.herald || !data.channel) return;
  const c = state.convs.get(data.channel);
  if (data.herald === 'typing' && c && data.user !== state.me) {
    c.typing.set(data.user, Date.now() + TYPING_SHOWN_MS);
    if (c.channel === state.active) renderTyping();
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
  } else if (data.herald === 'receipt' && c) {
    c.receipts.set(data.user, { read: data.read, delivered: data.delivered });
    if (c.channel === state.active) renderReceipt();
  } else if (data.herald === 'marker' && c) {
    // My other device read it.
    c.unread = Math.max(0, c.head - data.read);
    renderLists();
  } else if (data.herald === 'members') {
    conv(data.channel);
  }
}

async function open(channel) {
  const c = conv(channel);
  state.active = channel;
  $('#title').textContent = c.room ? titleOf(channel) : '@' + titleOf(channel);
  $('#messages').replaceChildren();
  $('#text').focus();
  renderLists();
  if (!c.loaded) await loadOlder(c);
  renderChat(true);
  markRead(c);
  const r = await rpc('herald.receipts', { channel, limit: 100 });
  if (r) {
    for (const x of r.receipts) c.receipts.set(x.user, { read: x.read, delivered: x.delivered });
  }
  renderReceipt();
}

// One page of history before the oldest message loaded (the newest page
// first time), by the publication cursor (offset and epoch).
async function loadOlder(c) {
  const opts = { limit: PAGE, reverse: true };
  if (c.loaded && c.oldest > 0) opts.since = { offset: c.oldest, epoch: c.epoch };
  try {
    const res = await c.sub.history(opts);
    c.epoch = res.epoch;
    for (const p of res.publications) addMessage(c, p);
    const offsets = res.publications.map((p) => p.offset);
    if (offsets.length) c.oldest = Math.min(...offsets, c.oldest || Infinity);
    c.loaded = true;
    c.more = res.publications.length === PAGE && c.oldest > 1;
  } catch (e) {
    console.warn('history', e);
  }
}

function renderLists() {
  let total = 0;
  const rooms = [];
  const dms = [];
  for (const c of state.convs.values()) {
    total += c.unread;
    (c.room ? rooms : dms).push(c);
  }
  const item = (c) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.channel = c.channel;
    b.setAttribute('aria-current', String(c.channel === state.active));
    const name = document.createElement('span');
    const who = titleOf(c.channel);
    if (!c.room && state.online.has(who)) {
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.title = 'online';
      name.append(dot);
    }
    name.append(c.room ? titleOf(c.channel) : who);
    b.append(name);
    if (c.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(c.unread);
      badge.setAttribute('aria-label', `${c.unread} unread`);
      b.append(badge);
    }
    b.addEventListener('click', () => open(c.channel));
    li.append(b);
    return li;
  };
  const byName = (a, b) => a.channel.localeCompare(b.channel);
  $('#rooms').replaceChildren(...rooms.sort(byName).map(item));
  $('#dms').replaceChildren(...dms.sort(byName).map(item));
  const people = [...state.online.keys()].sort();
  $('#online-count').textContent = `(${people.length})`;
  $('#online').replaceChildren(...people.map((u) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.user = u;
    const dot = document.createElement('span');
    dot.className = 'dot';
    const name = document.createElement('span');
    name.append(dot, u === state.me ? `${u} (you)` : u);
    b.append(name);
    if (u === state.me) b.disabled = true;
    else b.addEventListener('click', () => open(dmChannel(state.me, u)));
    li.append(b);
    return li;
  }));
  document.title = total > 0 ? `(${total}) Herald demo` : 'Herald demo';
}

function renderChat(scroll) {
  const c = state.convs.get(state.active);
  if (!c) return;
  const list = $('#messages');
  const offsets = [...c.messages.keys()].sort((a, b) => a - b);
  list.replaceChildren(...offsets.map((o) => {
    const m = c.messages.get(o);
    const li = document.createElement('li');
    li.className = 'msg' + (m.user === state.me ? ' mine' : '') + (m.user ? '' : ' server');
    li.dataset.offset = String(o);
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = m.user || 'server';
    li.append(who, m.text);
    return li;
  }));
  $('#older').hidden = !c.more;
  if (scroll) $('#scroller').scrollTop = $('#scroller').scrollHeight;
  renderReceipt();
  renderTyping();
}

function renderReceipt() {
  const c = state.convs.get(state.active);
  const el = $('#receipt');
  el.textContent = '';
  if (!c) return;
  const mine = [...c.messages.values()].filter((m) => m.user === state.me).map((m) => m.offset);
  if (!mine.length) return;
  const last = Math.max(...mine);
  const others = [...c.receipts.entries()].filter(([u]) => u !== state.me);
  const seen = others.filter(([, r]) => r.read >= last).map(([u]) => u);
  if (seen.length) {
    el.textContent = c.room ? `Seen by ${seen.sort().join(', ')}` : 'Seen';
  } else if (others.some(([, r]) => r.delivered >= last)) {
    el.textContent = 'Delivered';
  } else {
    el.textContent = 'Sent';
  }
}

function renderTyping() {
  const c = state.convs.get(state.active);
  const now = Date.now();
  const who = c ? [...c.typing.entries()].filter(([, until]) => until > now).map(([u]) => u) : [];
  $('#typing').textContent = who.length ? `${who.sort().join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
}

function setState(s) {
  const el = $('#state');
  el.textContent = s;
  el.className = 'state ' + s;
}

async function join(name) {
  const first = await fetchToken(name);
  state.me = first.user;
  state.lobby = first.rooms[0];
  state.joined = new Set(first.joined);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const client = new Centrifuge(`${proto}//${location.host}/connection/websocket`, {
    token: first.token,
    getToken: async () => (await fetchToken(state.me)).token,
  });
  state.client = client;
  client.on('state', (ctx) => setState(ctx.newState));
  client.on('connected', () => refreshConversations());
  client.on('message', (ctx) => onMessage(ctx.data));
  $('#me').textContent = state.me;
  $('#login').hidden = true;
  $('#app').hidden = false;
  for (const room of first.rooms) conv(room);
  client.connect();
  await open(state.lobby);
}

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('#login-error').textContent = '';
  try {
    await join($('#name').value.trim());
  } catch (err) {
    $('#login-error').textContent = String(err.message || err);
  }
});

$('#composer').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('#text');
  const text = input.value.trim();
  const c = state.convs.get(state.active);
  if (!text || !c) return;
  input.value = '';
  try {
    await c.sub.publish({ text });
  } catch (err) {
    input.value = text;
    console.warn('publish', err);
  }
});

$('#text').addEventListener('input', () => {
  const now = Date.now();
  if (!state.active || now - state.lastTyping < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  rpc('herald.typing', { channel: state.active });
});

$('#older').addEventListener('click', async () => {
  const c = state.convs.get(state.active);
  if (!c) return;
  const scroller = $('#scroller');
  const before = scroller.scrollHeight;
  await loadOlder(c);
  renderChat(false);
  scroller.scrollTop = scroller.scrollHeight - before;
});
