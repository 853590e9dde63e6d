"""The outbox writer: events reach the outbox translated, with the state read after
them; a held STOPPED is dropped by a later event and written when due or at stop."""

import threading
import time

from lifecycle_common import wire
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import (DomainState, Event, ShutdownDetail, StartedDetail,
                                              StoppedDetail, SuspendedDetail)
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.outbox_writer import STOP, OutboxWriter
from lifecycle_publisher.translation import Observed
from lifecycle_publisher.wakeup import Inbox, Wakeup

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def ev(seq, event, detail):
    return DomainEvent(seq=seq, occurred_at=time.time(), uuid=UUID, name="vm",
                       event=int(event), detail=int(detail))


def run_writer(tmp_path, stopped_delay=0.0, observe=lambda events: {}):
    q = Inbox(Wakeup())
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    writer = OutboxWriter(q, outbox, "h1", 7, observe=observe,
                          stopped_delay=stopped_delay)
    thread = threading.Thread(target=writer.run)
    thread.start()
    return q, outbox, thread


def written(outbox):
    return [wire.decode(r.body) for r in outbox.fetch_after(0, 100)]


def test_an_event_that_does_not_say_the_power_state_is_written_with_the_state_read_after_it(
        tmp_path):
    seen = []

    def observe(events):
        seen.extend(e.seq for e in events)
        return {UUID: Observed(DomainState.SHUTOFF, 1)}

    q, outbox, thread = run_writer(tmp_path, observe=observe)
    q.put(ev(1, Event.SHUTDOWN, ShutdownDetail.FINISHED))
    q.put(STOP)
    thread.join(10)
    [note] = written(outbox)
    assert seen == [1]
    assert note.event_type == "instance.shutting_down"
    assert note.payload.libvirt_state == "SHUTOFF" and note.payload.libvirt_reason == 1
    assert note.payload.power_state == "shutdown"  # level-triggered
    assert note.payload.host == "h1" and note.payload.epoch == 7 and note.payload.seq == 1


def test_events_that_say_the_power_state_are_written_without_a_read(tmp_path):
    seen = []

    def observe(events):
        seen.extend(e.seq for e in events)
        return {}

    q, outbox, thread = run_writer(tmp_path, observe=observe)
    q.put(ev(1, Event.STARTED, StartedDetail.BOOTED))
    q.put(ev(2, Event.SUSPENDED, SuspendedDetail.PAUSED))
    q.put(ev(3, Event.SUSPENDED, SuspendedDetail.MIGRATED))  # its migration job is read
    q.put(STOP)
    thread.join(10)
    notes = written(outbox)
    assert seen == [3]
    assert [(n.event_type, n.payload.power_state, n.payload.libvirt_state) for n in notes] == [
        ("instance.started", "running", None), ("instance.paused", "paused", None),
        ("instance.paused", "paused", None)]


def test_a_step_says_which_rows_it_wrote(tmp_path):
    q = Inbox(Wakeup())
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    writer = OutboxWriter(q, outbox, "h1", 7)
    q.put(ev(1, Event.STARTED, StartedDetail.BOOTED))
    q.put(ev(2, Event.RESUMED, 0))
    step = writer.step()
    assert not step.stopped
    if step.rows is not None:  # an outbox that says the keys of the rows it wrote
        assert [(key, body) for key, body in step.rows] == [
            (r.id, r.body) for r in outbox.fetch_after(0, 10)]
    assert writer.step().rows == []  # nothing more in the inbox
    q.put(STOP)
    assert writer.step().stopped
    outbox.close()


def test_held_stop_is_dropped_by_a_restart(tmp_path):
    q, outbox, thread = run_writer(tmp_path, stopped_delay=30)
    q.put(ev(1, Event.STOPPED, StoppedDetail.SHUTDOWN))
    q.put(ev(2, Event.STARTED, StartedDetail.BOOTED))
    q.put(STOP)
    thread.join(10)
    assert [n.event_type for n in written(outbox)] == ["instance.started"]


def test_held_stop_is_written_when_due(tmp_path, wait_for):
    q, outbox, thread = run_writer(tmp_path, stopped_delay=0.2)
    q.put(ev(1, Event.STOPPED, StoppedDetail.DESTROYED))
    wait_for(lambda: outbox.pending() > 0, timeout=10, message="the held STOPPED written")
    q.put(STOP)
    thread.join(10)
    assert [n.event_type for n in written(outbox)] == ["instance.stopped"]


def test_held_stop_is_written_at_shutdown(tmp_path):
    q, outbox, thread = run_writer(tmp_path, stopped_delay=30)
    q.put(ev(1, Event.STOPPED, StoppedDetail.DESTROYED))
    q.put(STOP)
    thread.join(10)
    assert not thread.is_alive()
    assert [n.event_type for n in written(outbox)] == ["instance.stopped"]


def test_what_is_written_is_counted_by_transition(tmp_path):
    from lifecycle_publisher.domain_event import Inventory
    q = Inbox(Wakeup())
    writer = OutboxWriter(q, Outbox(str(tmp_path / "outbox.sqlite")), "h1", 7)
    thread = threading.Thread(target=writer.run)
    thread.start()
    q.put(Inventory(seq=1, occurred_at=time.time(), reason="start", domains=()))
    q.put(ev(2, Event.STARTED, StartedDetail.BOOTED))
    q.put(ev(3, Event.STOPPED, StoppedDetail.SHUTDOWN))
    q.put(ev(4, Event.STARTED, StartedDetail.BOOTED))
    q.put(STOP)
    thread.join(10)
    assert writer.inventories == 1
    assert dict(writer.transitions) == {"started": 2, "stopped": 1}


def test_on_a_full_disk_the_writer_counts_what_it_loses_stays_up_and_recovers(
        tmp_path, caplog, wait_for):
    """A real full filesystem (a 1 MiB tmpfs filled to the last byte): the writer says
    once, loudly, that the disk is full, counts and logs the events it drops (the first
    20 by name), keeps going, tries again on a timer, and once the disk takes writes
    asks for an inventory; the inventory's write ends the outage."""
    import logging
    import os

    from lifecycle_publisher.domain_event import Inventory
    from lifecycle_publisher.outbox_outage import OutboxOutage
    from tests.support import tmpfs

    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox_writer")
    with tmpfs.small_tmpfs(str(tmp_path / "mnt"), size="1m") as mount:
        q = Inbox(Wakeup())
        outbox = Outbox(os.path.join(mount, "outbox.sqlite"))
        asked = threading.Event()
        writer = OutboxWriter(q, outbox, "h1", 7, ask_inventory=asked.set,
                              outage=OutboxOutage(retry_max=0.2))
        thread = threading.Thread(target=writer.run)
        thread.start()
        handled = lambda: writer.written + writer.outage.lost_total  # noqa: E731
        try:
            q.put(ev(1, Event.STARTED, StartedDetail.BOOTED))
            wait_for(lambda: outbox.pending() == 1, timeout=10, message="the first event")
            filler = tmpfs.fill(mount)
            seq = 1
            while writer.outage.lost_total == 0:  # the WAL file's free pages go first
                seq += 1
                assert seq < 200, "the full disk took every event"
                q.put(ev(seq, Event.STARTED, StartedDetail.BOOTED))
                wait_for(lambda: handled() == seq, timeout=10, message="the event handled")
            kept = outbox.pending()
            assert kept == seq - 1
            for _ in range(30):  # a burst, all lost
                seq += 1
                q.put(ev(seq, Event.STARTED, StartedDetail.BOOTED))
            wait_for(lambda: handled() == seq, timeout=10, message="the burst handled")
            assert writer.outage.current.lost == writer.outage.lost_total == 31
            assert writer.outage.current.reason == "database or disk is full"
            assert thread.is_alive() and not asked.is_set()
            assert outbox.pending() == kept  # nothing written, nothing lost of what was

            full = [r for r in caplog.records if r.levelname == "ERROR"]
            assert len(full) == 1
            assert "the disk is full" in full[0].message and mount in full[0].message
            assert "B free of 1.0 MiB" in full[0].message
            lost = [r.message for r in caplog.records if "not written to the outbox" in r.message]
            assert len(lost) == 20  # then only counted
            assert lost[0] == (f"host h1 seq {kept + 1} instance {UUID}: started not written "
                               "to the outbox (database or disk is full): lost; the inventory "
                               "taken once the disk takes writes again reconciles it")

            os.remove(filler)
            wait_for(asked.is_set, timeout=10, message="the inventory asked for, once the "
                                                       "trial write works")
            q.put(Inventory(seq=seq + 1, occurred_at=time.time(), reason="reconnect",
                            domains=()))
            wait_for(lambda: writer.outage.current is None, timeout=10,
                     message="the outage ended by the inventory's write")
            assert writer.outage.lost_total == 31 and writer.inventories == 1
            assert ("the outbox at %s can be written again" % outbox.path) in caplog.text
            assert ("31 events were not written meanwhile; the inventory just written "
                    "reconciles them") in caplog.text
        finally:
            q.put(STOP)
            thread.join(10)
            outbox.close()
