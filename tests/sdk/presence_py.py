"""Presence, join/leave and the user status RPC through the unmodified
official Python SDK (PyPI `centrifuge-python`), alice and bob on two nodes.

Run by tests/presence.rs, which passes in the environment:
  HERALD_WS_A          ws://host:port/connection/websocket of node A (alice)
  HERALD_WS_B          the same of node B (bob)
  HERALD_TOKEN_ALICE, HERALD_TOKEN_BOB  connection tokens
  HERALD_CHANNEL       a channel of a namespace with presence and join_leave
and PYTHONPATH holding the `centrifuge` package.

Its last stdout line is the report: {"ok": true, ...} and exit 0, or
{"ok": false, "error": ...} and exit 1.
"""

import asyncio
import json
import os
import sys

from centrifuge import Client, SubscriptionEventHandler

STEP_TIMEOUT = 10.0


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"missing environment variable {name}")
    return value


def check(cond, what, details=None):
    if not cond:
        raise RuntimeError(what if details is None else f"{what}: {details!r}")


async def until(what, cond):
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"timed out: {what}")
        await asyncio.sleep(0.02)


class RoomEvents(SubscriptionEventHandler):
    def __init__(self):
        self.joins = []
        self.leaves = []

    async def on_join(self, ctx):
        self.joins.append(ctx.info)

    async def on_leave(self, ctx):
        self.leaves.append(ctx.info)


async def main():
    channel = env("HERALD_CHANNEL")
    report = {}
    alice = Client(env("HERALD_WS_A"), token=env("HERALD_TOKEN_ALICE"), proxy=None)
    bob = Client(env("HERALD_WS_B"), token=env("HERALD_TOKEN_BOB"), proxy=None)
    events = RoomEvents()
    alice_sub = alice.new_subscription(channel, events=events, join_leave=True)
    bob_sub = bob.new_subscription(channel, join_leave=True)
    try:
        await alice.connect()
        await alice_sub.subscribe()
        await alice_sub.ready(timeout=STEP_TIMEOUT)
        await bob.connect()
        await bob_sub.subscribe()
        await bob_sub.ready(timeout=STEP_TIMEOUT)
        await until("alice sees bob join", lambda: any(i.user == "bob" for i in events.joins))
        bob_client = next(i.client for i in events.joins if i.user == "bob")
        report["join"] = "bob"

        async def both_present():
            for _ in range(int(STEP_TIMEOUT / 0.05)):
                p = await alice_sub.presence()
                if sorted(i.user for i in p.clients.values()) == ["alice", "bob"]:
                    return p
                await asyncio.sleep(0.05)
            raise RuntimeError("presence never held alice and bob")

        presence = await both_present()
        check(presence.clients[bob_client].user == "bob", "presence keyed by client id")
        report["presence"] = len(presence.clients)
        stats = await bob_sub.presence_stats()
        check((stats.num_clients, stats.num_users) == (2, 2), "presence stats", stats)
        report["stats"] = [stats.num_clients, stats.num_users]

        rpc = await alice.rpc("herald.user_status", {"users": ["bob", "nobody"]})
        statuses = rpc.data["statuses"]
        check(statuses[0]["user"] == "bob" and statuses[0]["online"] is True, "bob online", rpc.data)
        check(statuses[1]["online"] is False, "nobody offline", rpc.data)
        report["rpc"] = [s["online"] for s in statuses]

        await bob_sub.unsubscribe()
        await until("alice sees bob leave", lambda: any(i.client == bob_client for i in events.leaves))
        report["leave"] = "bob"
    finally:
        await bob.disconnect()
        await alice.disconnect()
    return report


if __name__ == "__main__":
    try:
        result = asyncio.run(asyncio.wait_for(main(), 60))
        print(json.dumps({"ok": True, **result}))
        sys.exit(0)
    except Exception as e:  # the report says what failed
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
