"""Drives Herald's server API with the PyPI `cent` SDK (5.x, sync client).

Usage: cent_publish.py API_URL API_KEY CHANNEL
Prints one JSON object per step on stdout; tests/api.rs asserts on them.
Run with PYTHONPATH=.tools/py (scripts/install-tools.sh installs cent there).
"""

import json
import sys

from cent import (
    CentApiResponseError,
    CentUnauthorizedError,
    Client,
    HistoryRequest,
    InfoRequest,
    PublishRequest,
)


def out(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def main():
    api_url, api_key, channel = sys.argv[1:4]
    client = Client(api_url, api_key, timeout=10)

    info = client.info(InfoRequest())
    out("info", nodes=len(info.nodes))

    try:
        Client(api_url, "not-the-key", timeout=10).info(InfoRequest())
        out("wrong_key", unauthorized=False)
    except CentUnauthorizedError:
        out("wrong_key", unauthorized=True)

    try:
        client.publish(PublishRequest(channel="nope:x", data={}))
        out("unknown_namespace", code=None)
    except CentApiResponseError as e:
        out("unknown_namespace", code=e.code)

    # Two publications, then a retry of the second with its idempotency key.
    for n, key in ((1, "cent-1"), (2, "cent-2"), (2, "cent-2")):
        result = client.publish(PublishRequest(channel=channel, data={"n": n}, idempotency_key=key))
        out("publish", offset=result.offset, epoch=result.epoch)

    history = client.history(HistoryRequest(channel=channel, limit=10))
    out(
        "history",
        offset=history.offset,
        epoch=history.epoch,
        publications=[{"offset": p.offset, "data": p.data} for p in history.publications],
    )


if __name__ == "__main__":
    main()
