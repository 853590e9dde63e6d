"""EventSource.observe against libvirt's in-process test driver (a private node file):
each event's domain is read back under its own UUID, whichever domains are gone."""

from __future__ import annotations

import uuid

import libvirt

from lifecycle_publisher.domain_event import DomainEvent, Sequencer
from lifecycle_publisher.event_source import EventSource
from lifecycle_common.libvirt_codes import Event


def _node(tmp_path, count: int) -> str:
    doms = "".join(
        f"<domain type='test'><name>obs-{i}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>" for i in range(count))
    path = tmp_path / "node.xml"
    path.write_text(f"<node>{doms}</node>")
    return f"test://{path}"


def _source(tmp_path, count: int) -> EventSource:
    source = EventSource(_node(tmp_path, count), Sequencer(0), deliver=lambda item: None)
    source.connect()
    return source


def _events(domains) -> list[DomainEvent]:
    return [DomainEvent(seq=i, occurred_at=0.0, uuid=d.UUIDString(), name=d.name(),
                        event=Event.SUSPENDED, detail=0, domain=d)
            for i, d in enumerate(domains)]


def test_each_domain_is_read_under_its_own_uuid(tmp_path):
    source = _source(tmp_path, 6)
    try:
        domains = sorted(source._conn.listAllDomains(), key=lambda d: d.name())
        domains[1].suspend()
        domains[2].suspend()
        events = _events(reversed(domains))  # asked in another order than listed
        observed = source.observe(events)
        paused = {d.UUIDString() for d in (domains[1], domains[2])}
        assert {u: o.state for u, o in observed.items()} == {
            d.UUIDString(): (libvirt.VIR_DOMAIN_PAUSED if d.UUIDString() in paused
                             else libvirt.VIR_DOMAIN_RUNNING) for d in domains}
    finally:
        source.close()


def test_a_domain_gone_is_observed_gone_and_the_others_keep_their_own_state(tmp_path):
    source = _source(tmp_path, 5)
    try:
        domains = sorted(source._conn.listAllDomains(), key=lambda d: d.name())
        events = _events(domains)
        domains[0].suspend()
        domains[2].destroy()
        domains[2].undefine()
        observed = source.observe(events)
        assert observed[domains[2].UUIDString()].state is None
        assert observed[domains[0].UUIDString()].state == libvirt.VIR_DOMAIN_PAUSED
        for d in (domains[1], domains[3], domains[4]):
            assert observed[d.UUIDString()].state == libvirt.VIR_DOMAIN_RUNNING
    finally:
        source.close()
