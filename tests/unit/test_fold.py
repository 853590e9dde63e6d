"""consumer.fold: what a batch writes, given the rows as they are. No database."""

from __future__ import annotations

import datetime

import pytest

from consumer import fold
from consumer.apply_rules import InstanceRow
from consumer.fold import Batch, HostRow
from lifecycle_common import timeutil
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    DomainState, Event, ResumedDetail, StartedDetail, StoppedDetail, SuspendedDetail,
    UndefinedDetail)

A, B = "compute-a", "compute-b"
EPOCH = 1_700_000_000
T0 = 1_764_000_000.0
NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=timeutil.UTC)
STAMP = NOW.replace(tzinfo=None)
VM1, VM2, VM3 = ("11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002",
                 "11111111-0000-4000-8000-000000000003")

CODES = {
    "started": (Event.STARTED, StartedDetail.BOOTED),
    "paused": (Event.SUSPENDED, SuspendedDetail.PAUSED),
    "resumed": (Event.RESUMED, ResumedDetail.UNPAUSED),
    "stopped": (Event.STOPPED, StoppedDetail.DESTROYED),
    "undefined": (Event.UNDEFINED, UndefinedDetail.REMOVED),
}
STATE_OF = {"started": "running", "paused": "paused", "resumed": "running",
            "stopped": "shutdown"}


def ev(what, seq, uuid=VM1, host=A, epoch=EPOCH):
    code, detail = CODES[what]
    return notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=T0 + seq, uuid=uuid, name="vm", event=int(code), detail=int(detail)))


def inv(seq, running=(), host=A, epoch=EPOCH, new_state=False):
    return notifications.inventory_notification(host, epoch, Inventory(
        seq=seq, occurred_at=T0 + seq, reason="start", new_state=new_state,
        domains=tuple(DomainSnapshot(u, "vm", int(DomainState.RUNNING), 1) for u in running)))


def beat(last_seq, host=A, epoch=EPOCH, status="running", ahead=0.0):
    return notifications.heartbeat_notification(
        host, epoch, last_seq, 1.0, status, True, now=NOW + datetime.timedelta(seconds=ahead))


def at(seq):
    return datetime.datetime.fromtimestamp(T0 + seq, timeutil.UTC)


def row(uuid=VM1, host=A, state="running", seq=1, epoch=EPOCH, deleted=False,
        event="instance.started"):
    return InstanceRow(uuid=uuid, name="vm", host=host, power_state=state, deleted=deleted,
                       epoch=epoch, seq=seq, last_event_type=event, event_occurred_at=at(seq))


def host_row(name=A, epoch=EPOCH, last_seq=1, **changes):
    base = HostRow(name=name, status="up", agent_status="running", libvirt_connected=True,
                   last_heartbeat_at=None, epoch=epoch, last_seq=last_seq,
                   updated_at=STAMP - datetime.timedelta(hours=1), clock_offset=None)
    return base._replace(**changes)


def run(notes, rows=(), hosts=(), journaled=(), words=None):
    """Fold ``notes`` as the store would: read what the fold names, then fold."""
    batch = Batch(notes)
    fresh = batch.fresh(set(journaled))
    uuids, inventory_hosts = fold.instances_to_load(fresh)
    loaded = {r.uuid: r for r in rows
              if r.uuid in uuids or (r.host in inventory_hosts and not r.deleted)}
    named = set(batch.host_names(fresh))
    return fold.fold(batch, set(journaled), loaded, words or {},
                     {h.name: h for h in hosts if h.name in named}, NOW)


def states(writes):
    return {r.uuid: (r.power_state, r.deleted, r.host, r.epoch, r.seq)
            for r in writes.new_instances + writes.changed_instances}


# -- instances: what changes, by table ---------------------------------------------

@pytest.mark.parametrize(("notes", "rows", "expected_new", "expected_changed", "outcomes"), [
    # a new instance
    ([ev("started", 2)], [], {VM1: ("running", False, A, EPOCH, 2)}, {}, {"applied": 1}),
    # the owner's newer event changes its row
    ([ev("paused", 2)], [row(seq=1)], {}, {VM1: ("paused", False, A, EPOCH, 2)},
     {"applied": 1}),
    # an older or equal one changes nothing
    ([ev("paused", 1)], [row(seq=5)], {}, {}, {"stale": 1}),
    # two in one batch, arrived out of order: the host's order decides
    ([ev("resumed", 3), ev("paused", 2)], [row(seq=1)], {},
     {VM1: ("running", False, A, EPOCH, 3)}, {"applied": 2}),
    # undefine marks deleted
    ([ev("undefined", 2)], [row(seq=1)], {}, {VM1: ("running", True, A, EPOCH, 2)},
     {"applied": 1}),
    # another host's start takes the instance; its stop does not
    ([ev("started", 7, host=B)], [row(seq=1)], {}, {VM1: ("running", False, B, EPOCH, 7)},
     {"applied": 1}),
    ([ev("stopped", 7, host=B)], [row(seq=1)], {}, {}, {"stale": 1}),
    # an inventory lists VM2 and not VM1 (older): VM1 deleted, VM2 new; VM3 of B untouched
    ([inv(5, running=[VM2])], [row(VM1, seq=1), row(VM3, host=B, seq=1)],
     {VM2: ("running", False, A, EPOCH, 5)}, {VM1: ("running", True, A, EPOCH, 5)},
     {"applied": 1}),
    # an instance changed after the inventory was taken stays
    ([inv(5, running=[])], [row(VM1, seq=9)], {}, {}, {"applied": 1}),
])
def test_instances(notes, rows, expected_new, expected_changed, outcomes):
    writes = run(notes, rows)
    assert {r.uuid: (r.power_state, r.deleted, r.host, r.epoch, r.seq)
            for r in writes.new_instances} == expected_new
    assert {r.uuid: (r.power_state, r.deleted, r.host, r.epoch, r.seq)
            for r in writes.changed_instances} == expected_changed
    assert {o.value: n for o, n in writes.result.outcomes.items()} == outcomes
    assert writes.applied_at == STAMP


def test_journal_rows_one_per_fresh_note_in_the_order_applied():
    writes = run([ev("resumed", 3), ev("paused", 2), inv(4, running=[VM1])], [row(seq=1)])
    assert [(j.host, j.epoch, j.seq, j.event_type, j.instance_uuid, j.outcome)
            for j in writes.journal] == [
        (A, EPOCH, 2, "instance.paused", VM1, "applied"),
        (A, EPOCH, 3, "instance.resumed", VM1, "applied"),
        (A, EPOCH, 4, "host.inventory", None, "applied")]
    assert writes.journal[0].occurred_at == at(2).replace(tzinfo=None)
    assert {j.applied_at for j in writes.journal} == {STAMP}
    assert [a[0] for a in writes.result.applied] == [
        "instance.paused", "instance.resumed", "host.inventory"]


@pytest.mark.parametrize(("notes", "journaled", "duplicates", "journal_seqs"), [
    ([ev("started", 1), ev("paused", 2)], [], 0, [1, 2]),
    ([ev("started", 1), ev("started", 1)], [], 1, [1]),             # repeated in the batch
    ([ev("started", 1), ev("paused", 2)], [(A, EPOCH, 1)], 1, [2]),  # journaled already
    ([ev("started", 1), ev("started", 1)], [(A, EPOCH, 1)], 2, []),
    ([ev("started", 1)], [(B, EPOCH, 1)], 0, [1]),                   # another host's key
])
def test_duplicates_are_counted_and_skipped(notes, journaled, duplicates, journal_seqs):
    writes = run(notes, journaled=journaled)
    assert writes.result.duplicates == duplicates
    assert [j.seq for j in writes.journal] == journal_seqs


def test_between_hosts_arrival_decides_within_a_host_its_sequence():
    notes = [ev("started", 5, VM1, host=B), ev("paused", 9, VM2), ev("started", 3, VM3, host=B),
             ev("started", 8, VM2)]
    batch = Batch(notes)
    assert [(n.payload.host, n.payload.seq) for n in batch.fresh(set())] == [
        (B, 3), (A, 8), (B, 5), (A, 9)]


def test_a_host_starting_over_puts_what_it_said_before_first():
    notes = [ev("started", 50, VM1), ev("resumed", 40, VM1),
             inv(1, [VM1], epoch=EPOCH - 10, new_state=True),
             ev("paused", 2, VM1, epoch=EPOCH - 10)]
    assert [(n.payload.epoch, n.payload.seq) for n in Batch(notes).fresh(set())] == [
        (EPOCH, 40), (EPOCH, 50), (EPOCH - 10, 1), (EPOCH - 10, 2)]


def test_starting_over_with_a_lower_epoch_renumbers_the_hosts_rows():
    """The rows of the earlier state yield to the new state's epoch; deleted rows the
    batch does not change are renumbered by Writes.start_over, not rewritten."""
    new_epoch = EPOCH - 100
    gone = row(VM3, deleted=True, seq=9)
    writes = run([inv(1, [VM1], epoch=new_epoch, new_state=True), ev("paused", 2, VM1, epoch=new_epoch)],
                 [row(VM1, seq=9), row(VM2, seq=9), gone],
                 hosts=[host_row(last_seq=9)])
    assert writes.start_over == [(A, new_epoch)]
    assert states(writes) == {VM1: ("paused", False, A, new_epoch, 2),
                              VM2: ("running", True, A, new_epoch, 1)}
    assert (writes.changed_hosts[0].epoch, writes.changed_hosts[0].last_seq) == (new_epoch, 2)


def test_a_deleted_row_loaded_and_renumbered_is_written_only_if_the_batch_changes_it():
    new_epoch = EPOCH - 100
    gone = row(VM3, deleted=True, seq=9)
    stale = run([inv(1, [], epoch=new_epoch, new_state=True), ev("stopped", 2, VM3, host=B)],
                [gone], words={(VM3, B): (EPOCH, 10)})
    assert stale.start_over == [(A, new_epoch)]
    assert stale.changed_instances == [] and stale.new_instances == []
    back = run([inv(1, [], epoch=new_epoch, new_state=True),
                ev("started", 2, VM3, epoch=new_epoch)], [gone])
    assert states(back) == {VM3: ("running", False, A, new_epoch, 2)}


# -- last words -------------------------------------------------------------------------

def test_words_are_wanted_for_instances_another_host_owns():
    fresh = [ev("started", 4, VM1, host=B), ev("started", 5, VM2), inv(6, [VM3], host=B)]
    rows = {VM1: row(VM1), VM2: row(VM2), VM3: row(VM3)}
    assert fold.words_wanted(fresh, rows) == {(VM1, B), (VM3, B)}
    assert fold.instances_to_load(fresh) == ({VM1, VM2, VM3}, {B})


@pytest.mark.parametrize(("last_word", "expected_host"), [
    (None, B),             # never heard B about it: B's start takes it
    ((EPOCH, 3), B),       # B said older things: its start is news
    ((EPOCH, 4), A),       # B said this already (a redelivery): stale
    ((EPOCH, 10), A),      # B said newer: this start is old
])
def test_a_late_start_from_another_host_yields_to_its_last_word(last_word, expected_host):
    words = {} if last_word is None else {(VM1, B): last_word}
    writes = run([ev("started", 4, VM1, host=B)], [row(VM1, seq=20)], words=words)
    assert {r.uuid: r.host for r in writes.changed_instances} == (
        {VM1: B} if expected_host == B else {})


# -- hosts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("notes", "existing", "expected"), [
    # a host heard of for the first time
    ([ev("started", 3)], [], ("new", "up", EPOCH, 3, None)),
    # its position moves forward, never back
    ([ev("started", 3)], [host_row(last_seq=1)], ("changed", "up", EPOCH, 3, None)),
    ([ev("started", 3)], [host_row(last_seq=9)], ("changed", "up", EPOCH, 9, None)),
    # a heartbeat: alive now, by this consumer's clock, with its offset
    ([beat(4, ahead=2.5)], [host_row(last_seq=1)], ("changed", "up", EPOCH, 4, STAMP)),
    ([beat(4, status="stopping")], [host_row()], ("changed", "down", EPOCH, 4, STAMP)),
    # a heartbeat of an older epoch than the host's changes its liveness not
    ([beat(99, epoch=EPOCH - 1)], [host_row(last_seq=5)], ("changed", "up", EPOCH, 5, None)),
])
def test_hosts(notes, existing, expected):
    writes = run(notes, hosts=existing)
    kind, status, epoch, last_seq, beat_at = expected
    written = writes.new_hosts if kind == "new" else writes.changed_hosts
    assert len(written) == 1 and not (writes.changed_hosts if kind == "new" else writes.new_hosts)
    h = written[0]
    assert (h.status, h.epoch, h.last_seq, h.last_heartbeat_at, h.updated_at) == (
        status, epoch, last_seq, beat_at, STAMP)


def test_a_heartbeat_says_how_far_ahead_the_hosts_clock_is():
    writes = run([beat(4, ahead=2.5)], hosts=[host_row()])
    assert writes.result.clock_offsets == {A: pytest.approx(2.5)}
    assert writes.changed_hosts[0].clock_offset == pytest.approx(2.5)
    assert writes.result.heartbeats == 1


def test_a_host_starting_over_is_set_lower_and_its_old_heartbeats_ignored():
    writes = run([beat(90, epoch=EPOCH), inv(1, [], epoch=EPOCH - 5, new_state=True)],
                 hosts=[host_row(last_seq=80)])
    h = writes.changed_hosts[0]
    assert (h.epoch, h.last_seq, h.last_heartbeat_at) == (EPOCH - 5, 1, None)
    assert writes.result.clock_offsets == {}


def test_nothing_to_write_for_a_batch_of_duplicates():
    writes = run([ev("started", 1)], [row(seq=1)], journaled=[(A, EPOCH, 1)])
    assert (writes.journal, writes.new_instances, writes.changed_instances, writes.new_hosts,
            writes.changed_hosts) == ([], [], [], [], [])


def _moments():
    utc = datetime.timezone.utc
    earliest, latest = timeutil.EARLIEST, timeutil.LATEST
    span = (latest - earliest) // datetime.timedelta(microseconds=1)
    import random
    rng = random.Random(5)
    moments = [earliest, latest, datetime.datetime(2000, 1, 1, tzinfo=utc),
               datetime.datetime(2026, 12, 7, 0, 10, 47, 123456, tzinfo=utc)]
    moments += [earliest + datetime.timedelta(microseconds=rng.randrange(span))
                for _ in range(2000)]
    return moments


def test_as_naive_utc_is_naive_utc():
    others = [datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
              datetime.timezone(datetime.timedelta(hours=-8))]
    for moment in _moments():
        for zone in [timeutil.UTC] + others:
            if zone is not timeutil.UTC and moment in (timeutil.EARLIEST, timeutil.LATEST):
                continue  # beyond datetime's range in that zone
            shown = moment.astimezone(zone)
            naive = fold.as_naive_utc(shown)
            assert naive == fold.naive_utc(shown) and naive.tzinfo is None
            assert naive == moment.replace(tzinfo=None)


def test_as_aware_utc_is_replace():
    for moment in _moments():
        naive = moment.replace(tzinfo=None)
        aware = fold.as_aware_utc(naive)
        assert aware == naive.replace(tzinfo=timeutil.UTC) and aware.tzinfo is timeutil.UTC
        assert aware.replace(tzinfo=None) == naive


@pytest.mark.parametrize("text", [
    "2026-12-07T00:10:47.123456+00:00", "2026-12-07T00:10:47+00:00", "2026-12-07T00:10:47Z",
    "2026-12-07T00:10:47.123456789+00:00", "2026-12-07T02:10:47.5+02:00",
    "2026-12-06T19:10:47-05:00", "2026-12-07T00:10:47.123456", "2026-12-07 00:10:47",
    "1970-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00",
    "2026-12-07T00:10:47.123456-00:00"])
def test_parse_utc_is_timeutil_parse(text):
    try:
        expected = timeutil.parse(text)
    except ValueError:
        with pytest.raises(ValueError):
            fold.parse_utc(text)
        return
    parsed = fold.parse_utc(text)
    assert parsed == expected and parsed.tzinfo is timeutil.UTC
    assert parsed.isoformat() == expected.isoformat()


@pytest.mark.parametrize("text", ["not a time", "2026-13-01T00:00:00+00:00", ""])
def test_parse_utc_refuses_what_timeutil_parse_refuses(text):
    with pytest.raises(ValueError):
        timeutil.parse(text)
    with pytest.raises(ValueError):
        fold.parse_utc(text)
