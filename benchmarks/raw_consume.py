"""The limit of what any consumer can apply: the same queue contents consumed and
acknowledged with no database and no decoding, with the consumer's own prefetch and
acks (a multiple ack per batch). Run by the benchmarks as
``python -m benchmarks.raw_consume JSON`` (``rabbitmq_url``, ``queue``, ``expected``,
``prefetch``, ``ack_every``, ``timeout``); prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import kombu

    conn = kombu.Connection(args["rabbitmq_url"], connect_timeout=10)
    conn.connect()
    channel = conn.channel()
    channel.basic_qos(0, args["prefetch"], False)
    seen = {"count": 0, "first": None, "last_tag": None, "unacked": 0}

    def on_message(message):
        if seen["first"] is None:
            seen["first"] = time.time()
        seen["count"] += 1
        seen["last_tag"] = message.delivery_tag
        seen["unacked"] += 1
        if seen["unacked"] >= args["ack_every"]:
            channel.basic_ack(seen["last_tag"], multiple=True)
            seen["unacked"] = 0

    channel.basic_consume(args["queue"], callback=on_message)
    deadline = time.monotonic() + args["timeout"]
    while seen["count"] < args["expected"] and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=1.0)
        except socket.timeout:
            if seen["unacked"]:
                channel.basic_ack(seen["last_tag"], multiple=True)
                seen["unacked"] = 0
    if seen["unacked"]:
        channel.basic_ack(seen["last_tag"], multiple=True)
    t_last = time.time()
    conn.release()
    print(json.dumps({"events": seen["count"], "t_first": seen["first"], "t_last": t_last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
