"""A terminal disconnect from the server API leaves the unmodified official
Python SDK (PyPI `centrifuge-python`) disconnected: it must not reconnect.

Run by tests/sdk.rs, which starts the server and passes, in the environment:
  HERALD_WS     ws://host:port/connection/websocket
  HERALD_TOKEN  alice's connection token
and PYTHONPATH holding the `centrifuge` package.

Alice connects; the script prints {"control": "disconnect"} on stdout and
waits for a line `done` on stdin, by which time the harness has asked the
server API to disconnect alice (code 3503, terminal). The script then waits
for the SDK's next state change: `on_disconnected` (terminal: the SDK stays
disconnected) or `on_connecting` (the SDK took the close as temporary and
reconnects). Its last stdout line is the report: {"ok": true, "event": ...,
"code": ..., "reason": ..., "state": ...} and exit 0, or {"ok": false,
"error": ...} and exit 1. The harness judges the event.
"""

import asyncio
import json
import os
import sys

from centrifuge import Client, ClientEventHandler

STEP_TIMEOUT = 8.0


class Events(ClientEventHandler):
    def __init__(self):
        self.connected = asyncio.Event()
        self.after = asyncio.get_running_loop().create_future()

    def _first(self, event, ctx):
        if self.connected.is_set() and not self.after.done():
            self.after.set_result({"event": event, "code": ctx.code, "reason": ctx.reason})

    async def on_connected(self, ctx):
        self.connected.set()

    async def on_connecting(self, ctx):
        self._first("connecting", ctx)

    async def on_disconnected(self, ctx):
        self._first("disconnected", ctx)


async def main():
    events = Events()
    client = Client(os.environ["HERALD_WS"], token=os.environ["HERALD_TOKEN"], events=events)
    await client.connect()
    try:
        await asyncio.wait_for(events.connected.wait(), STEP_TIMEOUT)
        print(json.dumps({"control": "disconnect"}), flush=True)
        answer = await asyncio.to_thread(sys.stdin.readline)
        if answer.strip() != "done":
            raise RuntimeError(f"the harness answered {answer!r}")
        after = await asyncio.wait_for(events.after, STEP_TIMEOUT)
        return {"ok": True, **after, "state": client.state.value}
    finally:
        await client.disconnect()


if __name__ == "__main__":
    try:
        report = asyncio.run(main())
    except Exception as e:  # the report says what failed
        report = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)
