"""Faults through the outbox writer: written in the per-host sequence beside the
lifecycle events, coalesced by ``[agent] fault_coalesce_interval`` (summaries written
by the step that finds their window ended, all of them at the inbox's STOP), never
cancelling a held STOPPED, counted apart from the transitions."""

from lifecycle_common import wire
from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher.domain_event import DomainEvent, DomainFault
from lifecycle_common.libvirt_codes import Event, StartedDetail, StoppedDetail
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.outbox_writer import STOP, OutboxWriter
from lifecycle_publisher.wakeup import Inbox, Wakeup

VM = "6695eb01-f6a4-8304-79aa-97f2502e193f"


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def io_error(seq, at=1795596916.0):
    return DomainFault(seq=seq, occurred_at=at, uuid=VM, name="vm", fault=Fault.IO_ERROR,
                       codes=("/d", "vda", 1, "eio"))


def lifecycle(seq, event, detail=0):
    return DomainEvent(seq=seq, occurred_at=1795596916.0, uuid=VM, name="vm",
                       event=int(event), detail=int(detail))


def make_writer(tmp_path, interval=1.0, stopped_delay=0.0):
    inbox = Inbox(Wakeup())
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    clock = Clock()
    writer = OutboxWriter(inbox, outbox, "h1", 7, stopped_delay=stopped_delay,
                          fault_coalesce_interval=interval, clock=clock)
    return inbox, outbox, writer, clock


def written(outbox):
    return [wire.decode(r.body) for r in outbox.fetch_after(0, 1000)]


def test_faults_are_written_in_sequence_with_lifecycle_events(tmp_path):
    inbox, outbox, writer, _ = make_writer(tmp_path)
    inbox.put(lifecycle(1, Event.STARTED, StartedDetail.BOOTED))
    inbox.put(DomainFault(seq=2, occurred_at=1.0, uuid=VM, name="vm", fault=Fault.REBOOTED,
                          codes=()))
    inbox.put(io_error(3))
    writer.step()
    notes = written(outbox)
    assert [(n.event_type, n.payload.seq) for n in notes] == [
        ("instance.started", 1), ("instance.rebooted", 2), ("instance.io_error", 3)]
    assert writer.transitions == {"started": 1}  # faults are not transitions
    assert writer.faults == {"rebooted": 1, "io_error": 1}


def test_a_storm_is_written_once_then_as_a_summary_when_its_window_ends(tmp_path):
    inbox, outbox, writer, clock = make_writer(tmp_path)
    for seq in range(1, 101):
        inbox.put(io_error(seq, at=1795596916.0 + seq / 1000))
    writer.step()
    assert [n.payload.count for n in written(outbox)] == [1]
    assert writer.deadline() == clock.now + 1.0
    clock.now += 0.5
    assert writer.step().rows == []
    clock.now += 0.5
    writer.step()  # the window ended: its summary, though the inbox is empty
    first, last = written(outbox)
    assert (last.payload.count, last.payload.seq) == (99, 100)
    assert last.payload.first_occurred_at == "2026-11-25T08:55:16.002000+00:00"
    assert writer.coalescer.coalesced == {"io_error": 98}
    assert writer.faults == {"io_error": 100}


def test_the_inbox_stop_writes_every_pending_summary(tmp_path):
    inbox, outbox, writer, _ = make_writer(tmp_path)
    for seq in range(1, 11):
        inbox.put(io_error(seq))
    inbox.put(STOP)
    assert writer.step().stopped
    assert [n.payload.count for n in written(outbox)] == [1, 9]
    assert len(writer.coalescer) == 0


def test_a_fault_does_not_cancel_a_held_stopped(tmp_path):
    inbox, outbox, writer, clock = make_writer(tmp_path, stopped_delay=5.0)
    inbox.put(lifecycle(1, Event.STOPPED, StoppedDetail.SHUTDOWN))
    inbox.put(DomainFault(seq=2, occurred_at=1.0, uuid=VM, name="vm",
                          fault=Fault.CONTROL_ERROR, codes=()))
    writer.step()
    assert [n.event_type for n in written(outbox)] == ["instance.control_error"]
    clock.now += 5.0
    writer.step()
    assert [n.event_type for n in written(outbox)] == ["instance.control_error",
                                                       "instance.stopped"]


def test_interval_zero_writes_every_occurrence(tmp_path):
    inbox, outbox, writer, _ = make_writer(tmp_path, interval=0.0)
    for seq in range(1, 6):
        inbox.put(io_error(seq))
    writer.step()
    assert [n.payload.count for n in written(outbox)] == [1] * 5
    assert writer.deadline() is None
