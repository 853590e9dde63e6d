"""Baseline for publish: oslo_messaging.Notifier.info per event, run as a subprocess
(oslo.messaging imports eventlet, which stays out of the benchmark's processes).

The callback only queues the event (as nova's does); a sender thread builds the same
payload the agent would and calls ``Notifier.info``, which returns once the broker
confirmed the message. Two shapes, as the agent's:
- with ``uri`` (production): subscribed to that daemon, it prints ``{"ready": true}``
  and the benchmark's load processes change the domains; it sends ``events`` events;
- without (in-process): a private test hypervisor of its own whose domains it changes
  itself as fast as libvirt emits.
Prints one JSON line with its result.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import libvirt
    import oslo_messaging
    from oslo_config import cfg

    from benchmarks.hosts import CYCLE, node_xml
    from lifecycle_common.wire import vocabulary
    from lifecycle_publisher import notifications
    from lifecycle_publisher.domain_event import DomainEvent, Sequencer
    from lifecycle_publisher.event_source import start_event_loop

    host = "publish-baseline"
    node = None
    if not args.get("uri"):
        node = os.path.join(args["workdir"], "baseline-publish-node.xml")
        with open(node, "w") as f:
            f.write(node_xml(host, args["domains"]))

    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[], default_config_dirs=[])
    oslo_messaging.set_transport_defaults(control_exchange=args["exchange"])
    transport = oslo_messaging.get_notification_transport(
        conf, url=args["transport_url"].rstrip("/") + "/?amqp_durable_queues=true")
    notifier = oslo_messaging.Notifier(transport, publisher_id=vocabulary.publisher_id(host),
                                       driver="messagingv2", topics=[args["topic"]])

    start_event_loop()
    conn = libvirt.open(args.get("uri") or f"test://{node}")
    handed: queue.SimpleQueue = queue.SimpleQueue()
    sequencer = Sequencer(1)

    def callback(_conn, dom, event, detail, _opaque):
        handed.put(DomainEvent(seq=sequencer.next(), occurred_at=time.time(),
                               uuid=dom.UUIDString(), name=dom.name(), event=event,
                               detail=detail))

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
    # One message first, so that the exchange and queue exist before timing.
    notifier.info({}, "host.heartbeat.warmup", {})
    total = args["events"]
    deadline = time.monotonic() + args["time_limit"]
    sent = 0
    done = threading.Event()

    t_last = None

    def sender():
        nonlocal sent, t_last
        while sent < total and time.monotonic() < deadline:
            try:
                event = handed.get(timeout=1.0)
            except queue.Empty:
                continue
            note = notifications.instance_notification(host, 1, event)
            notifier.info({}, note.event_type, note.to_message()["payload"])
            sent += 1
            t_last = time.time()
        done.set()

    thread = threading.Thread(target=sender)
    if args.get("uri"):  # the benchmark's loaders drive the daemon's domains
        print(json.dumps({"ready": True}), flush=True)
        thread.start()
        thread.join()
        transport.cleanup()
        print(json.dumps({"events": total, "sent": sent, "t_last": t_last,
                          "warmup_messages": 1}))
        return 0
    domains = sorted(conn.listAllDomains(), key=lambda d: d.name())
    t0 = time.time()
    thread.start()
    emitted = 0
    step = 0
    while emitted < total:
        for dom in domains:
            if emitted == total:
                break
            getattr(dom, CYCLE[step % len(CYCLE)][0])()
            emitted += 1
        step += 1
    thread.join()
    elapsed = time.time() - t0
    transport.cleanup()
    print(json.dumps({"events": total, "sent": sent, "seconds": elapsed,
                      "rate": sent / elapsed, "warmup_messages": 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
