"""The limit of what any agent can be handed: a bare libvirt-python lifecycle callback
on the daemon, counting events and keeping nothing. Run by the benchmarks as
``python -m benchmarks.bare_callback JSON`` (``uri``, ``expected``, ``timeout``):
prints ``{"ready": true}`` once subscribed, then, once ``expected`` events came or
``timeout`` seconds passed (``expected`` null: a steady load of a known length, counted
for the whole ``timeout``), one JSON line with the count and the wall-clock times of
the first and the last event; then, with ``linger`` (seconds), it stays subscribed that
long before it exits, so that the harness reads the CPU of its threads (of a process
that has exited, /proc keeps the total, not the threads).
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import libvirt

    from lifecycle_publisher.event_source import start_event_loop

    start_event_loop()
    conn = libvirt.open(args["uri"])
    seen = {"count": 0, "first": None, "last": None}
    done = threading.Event()
    expected = args.get("expected")

    def callback(_conn, _dom, _event, _detail, _opaque):
        now = time.time()
        if seen["first"] is None:
            seen["first"] = now
        seen["last"] = now
        seen["count"] += 1
        if expected is not None and seen["count"] >= expected:
            done.set()

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
    print(json.dumps({"ready": True}), flush=True)
    done.wait(args["timeout"])
    print(json.dumps({"events": seen["count"], "t_first": seen["first"],
                      "t_last": seen["last"]}), flush=True)
    time.sleep(args.get("linger", 0))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
