"""Where the latency goes: a queue of its own bound to the run's exchange (a spy)
receives a copy of every notification as the consumers' queue does; the moment each
arrives here minus its ``occurred_at`` is the agent's and the broker's share of the
latency (callback -> outbox -> confirmed publish -> delivered), the rest is the
consumer's. Run by the benchmarks as ``python -m benchmarks.spy_queue JSON``
(``rabbitmq_url``, ``exchange``, ``routing_key``, ``expected``, ``timeout``): prints
``{"ready": true}`` once bound, then one JSON line of percentiles (ms).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import kombu
    import orjson

    from lifecycle_common import timeutil
    from lifecycle_common.wire import payloads

    conn = kombu.Connection(args["rabbitmq_url"], connect_timeout=10)
    conn.connect()
    channel = conn.channel()
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).queue
    channel.queue_bind(queue, args["exchange"], args["routing_key"])
    delays: list[float] = []

    def on_message(message):
        # Only the two fields it needs, without the schemas: the spy must cost little
        # on a machine whose cores the measured pipeline shares.
        arrived = time.time()
        inner = orjson.loads(orjson.loads(message.body)["oslo.message"])
        if inner["event_type"].startswith("instance."):
            data = inner["payload"][f"{payloads.OBJECT_KEY}.data"]
            delays.append((arrived - timeutil.parse(data["occurred_at"]).timestamp()) * 1000)

    channel.basic_consume(queue, callback=on_message, no_ack=True)
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + args["timeout"]
    while len(delays) < args["expected"] and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=1.0)
        except socket.timeout:
            pass
    conn.release()
    delays.sort()

    def pct(fraction: float) -> float | None:
        if not delays:
            return None
        return delays[min(len(delays) - 1, int(round(fraction * (len(delays) - 1))))]
    print(json.dumps({"events": len(delays), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                      "max_ms": delays[-1] if delays else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
