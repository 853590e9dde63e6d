"""Load on libvirtd: a process of its own that changes domains through the daemons'
sockets, as a compute host's other clients (nova, virsh) would. Run by the benchmarks
as ``python -m benchmarks.libvirt_load JSON``; prints one JSON line when done.

Arguments: ``targets``, a list of ``{"uri", "host", "first", "count"}`` (the domains
``first`` to ``first + count - 1`` of that host's daemon, named as benchmarks.hosts
names them); ``start_at``, the wall-clock time to begin (several loaders begin
together); then either ``steps`` (every domain takes that many steps of the cycle, as
fast as the daemons answer) or ``rate`` and ``seconds`` (one step every 1/rate s,
round-robin over the targets' domains). Every step makes libvirt emit one lifecycle
event; each domain's first step is the one its state calls for (running: suspend,
paused: resume, shut off: create).
"""

from __future__ import annotations

import itertools
import json
import sys
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import libvirt

    from benchmarks.hosts import CYCLE, domain_name
    # Each domain's first step, from its state now: a run before this one may have
    # stepped only some domains (rate x seconds need not be whole cycles), leaving them
    # paused or shut off. A running one starts the cycle (suspend).
    first_step = {libvirt.VIR_DOMAIN_RUNNING: 0, libvirt.VIR_DOMAIN_PAUSED: 1,
                  libvirt.VIR_DOMAIN_SHUTOFF: 3}
    domains = []  # (domain, its position in CYCLE)
    connections = []
    for target in args["targets"]:
        conn = libvirt.open(target["uri"])
        connections.append(conn)
        found = {dom.name(): (dom, stats["state.state"])  # one call for all the states
                 for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)}
        for i in range(target["first"], target["first"] + target["count"]):
            dom, state = found[domain_name(target["host"], i)]
            domains.append([dom, first_step[state]])
    delay = args["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    t_start = time.time()
    events, behind = 0, 0.0
    if "steps" in args:
        for _ in range(args["steps"]):
            for entry in domains:
                _step(entry, CYCLE)
                events += 1
    else:
        interval = 1.0 / args["rate"]
        total = int(args["rate"] * args["seconds"])
        for n, entry in zip(range(total), itertools.cycle(domains)):
            due = t_start + n * interval
            now = time.time()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            _step(entry, CYCLE)
            events += 1
    t_end = time.time()
    for conn in connections:
        conn.close()
    print(json.dumps({"events": events, "t_start": t_start, "t_end": t_end,
                      "max_behind_s": behind, "cpu_s": time.process_time()}))
    return 0


def _step(entry: list, cycle) -> None:
    dom, position = entry
    getattr(dom, cycle[position][0])()
    entry[1] = (position + 1) % len(cycle)


if __name__ == "__main__":
    sys.exit(main())
