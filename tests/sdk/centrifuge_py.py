"""Drives Herald with the unmodified official Python SDK (PyPI
`centrifuge-python`) the way an application would, and checks what the SDK
reports.

Run by tests/sdk.rs, which starts the server (Herald, or Centrifugo for the
conformance run: nothing here is Herald-only) and passes, in the environment:
  HERALD_WS              ws://host:port/connection/websocket (bob)
  HERALD_WS_CUTTABLE     the same through a TCP proxy the harness can cut (alice)
  HERALD_TOKEN_SHORT     alice's first connection token, valid a few seconds
  HERALD_TOKEN           alice's token returned by get_token (refresh)
  HERALD_TOKEN_PUBLISHER bob's token (the other client publishing)
  HERALD_API             http://host:port/api (the server API)
  HERALD_API_KEY         its key
  HERALD_CHANNEL         a history channel, empty at start
  HERALD_FORBIDDEN_CHANNEL a channel alice may not subscribe to (error 103)
  HERALD_MISSED          how many publications alice misses while offline
  HERALD_SDK_DEBUG=1     the SDK's debug log (every frame) on stderr
  HERALD_PROTOBUF=1      the SDK's Protobuf protocol (`use_protobuf=True`, WebSocket
                         subprotocol `centrifuge-protobuf`): payloads are bytes, so
                         the script sends JSON text as bytes and parses what it
                         receives, as an application mixing encodings does
and PYTHONPATH holding the `centrifuge` package.

Alice connects through the harness's cuttable proxy: the script prints
{"control": "cut"} (every connection dropped, no WebSocket close frame, new
ones refused) or {"control": "restore"} on stdout and waits for a line `done`
on stdin. Her network stays down while the backend publishes through the
server API; the SDK notices and reconnects by itself.

Its last stdout line is the report: {"ok": true, ...} and exit 0, or
{"ok": false, "error": ...} and exit 1.
"""

import asyncio
import json
import logging
import os
import sys
import time
import urllib.request

from centrifuge import (
    Client,
    ClientEventHandler,
    ReplyError,
    StreamPosition,
    SubscriptionEventHandler,
    SubscriptionState,
)

STEP_TIMEOUT = 8.0


class Failure(Exception):
    pass


PROTOBUF = os.environ.get("HERALD_PROTOBUF") == "1"


def out(value):
    """A payload as the SDK takes it: JSON bytes with Protobuf."""
    return json.dumps(value).encode() if PROTOBUF else value


def data_of(data):
    """A received payload as a JSON value."""
    return json.loads(data) if PROTOBUF else data


def env(name):
    value = os.environ.get(name)
    if not value:
        raise Failure(f"missing environment variable {name}")
    return value


def check(cond, what, details=None):
    if not cond:
        raise Failure(what if details is None else f"{what}: {json.dumps(details, default=str)}")


def eq(actual, expected, what):
    check(actual == expected, what, {"expected": expected, "actual": actual})


async def until(what, cond):
    """Returns when cond() holds; polls, bounded by STEP_TIMEOUT."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def api_publish_blocking(channel, data):
    req = urllib.request.Request(
        env("HERALD_API") + "/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": env("HERALD_API_KEY")},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=STEP_TIMEOUT) as resp:
        body = json.load(resp)
    check("result" in body, "server API publish", body)
    return body["result"]["offset"]


async def api_publish(channel, data):
    """Publishes through the server API (off the event loop, which runs the
    SDK); returns the offset it answers."""
    return await asyncio.to_thread(api_publish_blocking, channel, data)


async def network(action):
    """Asks the harness to "cut" or "restore" alice's network; returns once
    done."""
    print(json.dumps({"control": action}), flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    eq(answer.strip(), "done", f"the harness confirms {action}")


class AliceEvents(ClientEventHandler):
    def __init__(self):
        self.connecting = []
        self.errors = []

    async def on_connecting(self, ctx):
        self.connecting.append({"code": ctx.code, "reason": ctx.reason})

    async def on_disconnected(self, ctx):
        self.errors.append({"type": "disconnected", "code": ctx.code, "reason": ctx.reason})

    async def on_error(self, ctx):
        self.errors.append({"type": "error", "code": ctx.code, "error": str(ctx.error)})


class ForbiddenEvents(SubscriptionEventHandler):
    def __init__(self):
        self.ends = []

    async def on_subscribed(self, ctx):
        self.ends.append({"subscribed": True})

    async def on_unsubscribed(self, ctx):
        self.ends.append({"code": ctx.code, "reason": ctx.reason})


class NewsEvents(SubscriptionEventHandler):
    def __init__(self):
        self.subscribed = []
        self.pubs = []
        self.errors = []

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_publication(self, ctx):
        p = ctx.pub
        self.pubs.append({
            "offset": p.offset,
            "data": data_of(p.data),
            "user": p.info.user if p.info else None,
        })

    async def on_error(self, ctx):
        self.errors.append({"type": "sub error", "code": ctx.code, "error": str(ctx.error)})

    async def on_unsubscribed(self, ctx):
        self.errors.append({"type": "unsubscribed", "code": ctx.code, "reason": ctx.reason})


async def scenario():
    ws = env("HERALD_WS")
    channel = env("HERALD_CHANNEL")
    missed_n = int(env("HERALD_MISSED"))

    get_token_calls = 0

    async def get_token():
        nonlocal get_token_calls
        get_token_calls += 1
        return env("HERALD_TOKEN")

    alice_events = AliceEvents()
    alice = Client(
        env("HERALD_WS_CUTTABLE"),
        events=alice_events,
        token=env("HERALD_TOKEN_SHORT"),
        get_token=get_token,
        min_reconnect_delay=0.1,
        max_reconnect_delay=0.4,
        proxy=None,
        use_protobuf=PROTOBUF,
    )
    bob = Client(ws, token=env("HERALD_TOKEN_PUBLISHER"), proxy=None, use_protobuf=PROTOBUF)
    news = NewsEvents()
    sub = alice.new_subscription(channel, events=news)
    subscribed, pubs = news.subscribed, news.pubs

    try:
        # 1–2. Connect with a token and subscribe to a history channel.
        await alice.connect()
        await bob.connect()
        await sub.subscribe()
        await sub.ready(timeout=STEP_TIMEOUT)
        eq(len(subscribed), 1, "one subscribed event")
        first = subscribed[0]
        eq(first.recoverable, True, "history channel is recoverable")
        eq(first.was_recovering, False, "first subscribe is not a recovery")
        check(first.stream_position is not None, "subscribed carries a stream position")
        eq(first.stream_position.offset, 0, "empty channel starts at offset 0")

        # 2b. A channel alice may not subscribe to: the subscription ends with 103.
        forbidden_channel = env("HERALD_FORBIDDEN_CHANNEL")
        forbidden_events = ForbiddenEvents()
        forbidden = alice.new_subscription(forbidden_channel, events=forbidden_events)
        await forbidden.subscribe()
        await until("the forbidden subscription ends", lambda: len(forbidden_events.ends) >= 1)
        eq([e.get("code") for e in forbidden_events.ends], [103],
           "forbidden channel: unsubscribed with 103 (permission denied)")
        eq(forbidden.state, SubscriptionState.UNSUBSCRIBED, "forbidden subscription state")
        alice.remove_subscription(forbidden)

        # 3. Publications by someone else arrive with offsets 1, 2, 3.
        for i in range(3):
            await bob.publish(channel, out({"from": "bob", "i": i}))
        await until("3 publications from bob", lambda: len(pubs) >= 3)
        eq(pubs[:3], [{"offset": o, "data": {"from": "bob", "i": i}, "user": "bob"}
                      for i, o in enumerate([1, 2, 3])], "bob's publications as alice sees them")

        # 4. Publish from the SDK; history by limit, since and reverse.
        await sub.publish(out({"from": "alice"}))
        await until("alice's own publication", lambda: len(pubs) >= 4)
        eq(pubs[3], {"offset": 4, "data": {"from": "alice"}, "user": "alice"},
           "alice's own publication")

        everything = await sub.history(limit=10)
        eq([p.offset for p in everything.publications], [1, 2, 3, 4], "history limit 10")
        eq([data_of(p.data) for p in everything.publications],
           [{"from": "bob", "i": i} for i in range(3)] + [{"from": "alice"}], "history data")
        eq(everything.publications[0].info.user, "bob", "history carries publisher info")
        eq(everything.offset, 4, "history stream top")
        epoch = everything.epoch
        check(isinstance(epoch, str) and epoch, "history epoch", epoch)
        top = await sub.history(limit=0)
        eq([len(top.publications), top.offset, top.epoch], [0, 4, epoch],
           "history limit 0: position only")
        since = await sub.history(limit=2, since=StreamPosition(offset=1, epoch=epoch))
        eq([p.offset for p in since.publications], [2, 3], "history since offset 1, limit 2")
        newest = await sub.history(limit=2, reverse=True)
        eq([p.offset for p in newest.publications], [4, 3], "history reverse, limit 2")
        before = await sub.history(
            limit=2, since=StreamPosition(offset=4, epoch=epoch), reverse=True
        )
        eq([p.offset for p in before.publications], [3, 2],
           "history reverse since offset 4, limit 2")
        wrong_epoch = None
        try:
            await sub.history(limit=2, since=StreamPosition(offset=1, epoch="not-" + epoch))
        except ReplyError as e:
            wrong_epoch = e.code
        eq(wrong_epoch, 112, "history since a position of another epoch is unrecoverable")

        # 1 (refresh). The first token is short-lived: the SDK asks get_token for
        # a new one and refreshes the connection without reconnecting.
        await until("get_token called for a refresh", lambda: get_token_calls >= 1)
        after_refresh = await sub.history(limit=0)
        eq(after_refresh.offset, 4, "connection works after the refresh")
        eq([c["code"] for c in alice_events.connecting], [0],
           "no reconnect so far (only the initial connect)")

        # 5. Cut alice's network; the backend publishes through the server API
        # while she is away; the SDK reconnects on its own and recovers exactly
        # what she missed.
        before_drop = len(pubs)
        await network("cut")
        await until("alice notices the drop",
                    lambda: len(alice_events.connecting) >= 2
                    and sub.state == SubscriptionState.SUBSCRIBING)
        for i in range(missed_n):
            eq(await api_publish(channel, {"missed": i}), 5 + i, "server API publish offset")
        eq(len(pubs), before_drop, "nothing reaches alice while her network is down")
        await network("restore")
        await until("resubscribed", lambda: len(subscribed) >= 2)
        rec = subscribed[1]
        eq([rec.was_recovering, rec.recovered], [True, True],
           "resubscribe recovered the missed publications")
        # The reply's offset is server-specific (the harness checks it): Herald
        # sends the stream top, Centrifugo the position recovered from.
        eq(rec.stream_position.epoch, epoch, "same epoch after recovery")
        await until(f"{missed_n} recovered publications", lambda: len(pubs) >= 4 + missed_n)

        # Then live ones again.
        await bob.publish(channel, out({"live": 0}))
        eq(await api_publish(channel, {"live": 1}), 6 + missed_n, "server API publish offset")
        await until("2 live publications after recovery", lambda: len(pubs) >= 6 + missed_n)
        await asyncio.sleep(0.1)

        missed = pubs[4:4 + missed_n]
        eq([p["offset"] for p in missed], list(range(5, 5 + missed_n)), "recovered offsets")
        eq([[p["data"], p["user"]] for p in missed], [[{"missed": i}, None] for i in range(missed_n)],
           "recovered data (server API publications carry no client info)")
        eq(pubs[4 + missed_n:],
           [{"offset": 5 + missed_n, "data": {"live": 0}, "user": "bob"},
            {"offset": 6 + missed_n, "data": {"live": 1}, "user": None}], "live after recovery")
        eq([p["offset"] for p in pubs], list(range(1, 7 + missed_n)),
           "every offset once, in order")
        eq([c["code"] for c in alice_events.connecting], [0, 1],
           "connecting events: initial connect, then transport closed")
        eq([e for e in alice_events.errors if e["code"] != 2], [],
           "no errors but the transport ones of the drop")
        eq(news.errors, [], "no subscription errors")

        return {
            "ok": True,
            "offsets": [p["offset"] for p in pubs],
            "epoch": epoch,
            "get_token_calls": get_token_calls,
            "forbidden": {"channel": forbidden_channel, "code": forbidden_events.ends[0]["code"]},
            "first_position": {"offset": first.stream_position.offset,
                               "epoch": first.stream_position.epoch},
            "connecting": alice_events.connecting,
            "recovery": {
                "was_recovering": rec.was_recovering,
                "recovered": rec.recovered,
                "offset": rec.stream_position.offset,
            },
        }
    finally:
        await alice.disconnect()
        await bob.disconnect()


def main():
    if os.environ.get("HERALD_SDK_DEBUG") == "1":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    try:
        report = asyncio.run(asyncio.wait_for(scenario(), timeout=25))
    except Failure as e:
        report = {"ok": False, "error": str(e)}
    except Exception as e:  # anything else the SDK or the script raised
        report = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
