"""consumer.apply_rules: which notification changes an instance row, and how."""

import datetime

import pytest

from consumer.apply_rules import InstanceRow, Observation, Outcome, apply, vanished

UUID = "3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17"
T0 = datetime.datetime(2026, 11, 25, 8, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def row(**changes) -> InstanceRow:
    base = InstanceRow(uuid=UUID, name="vm-1", host="host-a", power_state="running",
                       deleted=False, epoch=100, seq=10, last_event_type="instance.started",
                       event_occurred_at=at(0))
    return base._replace(**changes)


def obs(**changes) -> Observation:
    base = Observation(uuid=UUID, name="vm-1", host="host-a", epoch=100, seq=11,
                       occurred_at=at(1), event_type="instance.paused", power_state="paused",
                       deleted=False)
    return base._replace(**changes)


# -- the host that owns the row: (epoch, seq) decides -------------------------------

@pytest.mark.parametrize(("epoch", "seq", "expected"), [
    (100, 11, Outcome.APPLIED),   # next in sequence
    (100, 500, Outcome.APPLIED),  # later, with a gap
    (101, 1, Outcome.APPLIED),    # a new epoch restarts nothing: it is newer
    (100, 10, Outcome.STALE),     # duplicate
    (100, 9, Outcome.STALE),      # older
    (99, 999, Outcome.STALE),     # an earlier epoch, however high its seq
])
def test_same_host_orders_by_epoch_then_seq(epoch, seq, expected):
    current = row()
    after, outcome = apply(current, obs(epoch=epoch, seq=seq))
    assert outcome is expected
    if expected is Outcome.APPLIED:
        assert (after.power_state, after.epoch, after.seq) == ("paused", epoch, seq)
        assert after.last_event_type == "instance.paused"
    else:
        assert after == current


def test_same_host_ignores_occurred_at():
    # a newer (epoch, seq) applies even if the host's clock went backwards
    after, outcome = apply(row(), obs(occurred_at=at(-3600)))
    assert outcome is Outcome.APPLIED
    assert after.event_occurred_at == at(-3600)
    # an older one does not, even with a later clock
    _, outcome = apply(row(), obs(seq=9, occurred_at=at(3600)))
    assert outcome is Outcome.STALE


def test_applying_twice_is_applying_once():
    first, _ = apply(row(), obs())
    second, outcome = apply(first, obs())
    assert outcome is Outcome.STALE
    assert second == first


def test_order_of_delivery_does_not_matter():
    events = [obs(seq=11, power_state="paused", event_type="instance.paused"),
              obs(seq=12, power_state="running", event_type="instance.resumed"),
              obs(seq=13, power_state="shutdown", event_type="instance.stopped")]
    in_order = row()
    for e in events:
        in_order, _ = apply(in_order, e)
    reversed_ = row()
    for e in reversed(events):
        reversed_, _ = apply(reversed_, e)
    assert in_order == reversed_
    assert (in_order.power_state, in_order.seq) == ("shutdown", 13)


# -- power state and deletion -----------------------------------------------------

def test_no_power_state_keeps_the_previous_one():
    after, outcome = apply(row(power_state="paused"),
                           obs(power_state=None, event_type="instance.shutting_down"))
    assert outcome is Outcome.APPLIED
    assert after.power_state == "paused"
    assert after.last_event_type == "instance.shutting_down"
    assert after.seq == 11


def test_new_instance_without_power_state_is_pending():
    after, outcome = apply(None, obs(power_state=None, event_type="instance.defined"))
    assert outcome is Outcome.APPLIED
    assert after.power_state == "pending"
    assert (after.uuid, after.host, after.epoch, after.seq) == (UUID, "host-a", 100, 11)


def test_new_instance_takes_the_event_power_state():
    after, outcome = apply(None, obs(power_state="running", event_type="instance.started"))
    assert outcome is Outcome.APPLIED
    assert (after.power_state, after.deleted) == ("running", False)


def test_undefined_marks_deleted_and_keeps_the_power_state():
    after, outcome = apply(row(power_state="shutdown"),
                           obs(event_type="instance.undefined", power_state=None, deleted=True))
    assert outcome is Outcome.APPLIED
    assert after.deleted is True
    assert after.power_state == "shutdown"


def test_a_newer_event_brings_a_deleted_instance_back():
    deleted = row(deleted=True, power_state="shutdown", last_event_type="instance.undefined")
    after, outcome = apply(deleted, obs(event_type="instance.defined", power_state="shutdown"))
    assert outcome is Outcome.APPLIED
    assert after.deleted is False


def test_an_empty_name_keeps_the_known_one():
    after, _ = apply(row(name="vm-1"), obs(name=""))
    assert after.name == "vm-1"


# -- another host: news that the guest runs there, by arrival; never by clocks ------

@pytest.mark.parametrize(("event_type", "power_state", "runs_here", "expected"), [
    ("instance.started", "running", True, Outcome.APPLIED),   # the guest moved there
    ("instance.resumed", "running", True, Outcome.APPLIED),
    ("instance.stopped", "shutdown", False, Outcome.STALE),   # not the owner: stale
    ("instance.undefined", None, False, Outcome.STALE),
    ("instance.migrated", None, False, Outcome.STALE),
    ("instance.arriving", None, False, Outcome.STALE),
])
@pytest.mark.parametrize("occurred", [-7200, -5, 0, 5, 7200])
def test_another_host_whatever_the_clocks(event_type, power_state, runs_here, occurred,
                                          expected):
    """A host's clock two hours behind or ahead of the owner's changes nothing."""
    current = row(host="host-a", epoch=100, seq=10, event_occurred_at=at(0))
    # the other host's (epoch, seq) is far greater, or far smaller: it must not matter
    for epoch, seq in ((900, 9000), (1, 1)):
        after, outcome = apply(current, obs(host="host-b", epoch=epoch, seq=seq,
                                            event_type=event_type, power_state=power_state,
                                            deleted=event_type == "instance.undefined",
                                            runs_here=runs_here, occurred_at=at(occurred)))
        assert outcome is expected
        if expected is Outcome.APPLIED:
            assert (after.host, after.epoch, after.seq) == ("host-b", epoch, seq)
            assert after.power_state == "running"
        else:
            assert after == current


@pytest.mark.parametrize("departure", ["instance.migrating", "instance.migrated"])
def test_after_a_departure_the_destination_takes_over(departure):
    current = row(last_event_type=departure, event_occurred_at=at(10), power_state="paused")
    after, outcome = apply(current, obs(host="host-b", epoch=5, seq=2, occurred_at=at(9),
                                        event_type="instance.resumed",
                                        power_state="running", runs_here=True))
    assert outcome is Outcome.APPLIED
    assert (after.host, after.power_state) == ("host-b", "running")


def test_other_news_from_elsewhere_is_stale():
    current = row(last_event_type="instance.migrating", event_occurred_at=at(0))
    _, outcome = apply(current, obs(host="host-b", occurred_at=at(5), event_type="instance.arriving",
                                    power_state=None, runs_here=False))
    assert outcome is Outcome.STALE


@pytest.mark.parametrize("last_word", [(100, 20), (100, 21), (101, 1)])
def test_a_hosts_old_word_cannot_take_back_an_instance_that_moved_on(last_word):
    """host-a said (100, 20) "started" long ago, then "migrated" at ``last_word``; the
    instance now runs on host-b. A late redelivery of the old start is stale."""
    on_b = row(host="host-b", epoch=7, seq=3, last_event_type="instance.resumed")
    old_start = obs(host="host-a", epoch=100, seq=20, event_type="instance.started",
                    power_state="running", runs_here=True)
    after, outcome = apply(on_b, old_start, last_word=last_word)
    assert outcome is Outcome.STALE
    assert after == on_b


def test_a_hosts_newer_word_takes_it_back():
    """A failed migration: the source resumes the guest after the destination claimed it."""
    on_b = row(host="host-b", epoch=7, seq=3, last_event_type="instance.resumed")
    resumed = obs(host="host-a", epoch=100, seq=22, event_type="instance.resumed",
                  power_state="running", runs_here=True)
    after, outcome = apply(on_b, resumed, last_word=(100, 21))
    assert outcome is Outcome.APPLIED
    assert (after.host, after.epoch, after.seq) == ("host-a", 100, 22)


@pytest.mark.parametrize("occurred", [-7200, 5])
def test_a_deleted_instance_is_taken_by_any_event_from_another_host(occurred):
    current = row(deleted=True, last_event_type="instance.undefined", event_occurred_at=at(0))
    after, outcome = apply(current, obs(host="host-b", occurred_at=at(occurred),
                                        event_type="instance.defined", power_state="shutdown"))
    assert outcome is Outcome.APPLIED
    assert (after.host, after.deleted, after.power_state) == ("host-b", False, "shutdown")
    _, outcome = apply(current, obs(host="host-b", event_type="instance.defined",
                                    power_state="shutdown"), last_word=(100, 11))
    assert outcome is Outcome.STALE  # not newer than what host-b said before


# -- vanished: an instance of the host that its inventory does not list -------------

def test_vanished_instance_is_deleted_with_the_inventory_position():
    gone = vanished(row(epoch=100, seq=10), "host-a", 100, 20, at(30))
    assert gone is not None
    assert gone.deleted is True
    assert (gone.epoch, gone.seq, gone.event_occurred_at) == (100, 20, at(30))
    assert gone.last_event_type == "host.inventory"
    assert (gone.uuid, gone.name, gone.host, gone.power_state) == (UUID, "vm-1", "host-a", "running")


@pytest.mark.parametrize(("epoch", "seq"), [(100, 10), (100, 11), (101, 1)])
def test_vanished_keeps_a_row_changed_after_the_inventory(epoch, seq):
    # the row's (epoch, seq) is at or after the inventory's (100, 10)
    assert vanished(row(epoch=epoch, seq=seq), "host-a", 100, 10, at(30)) is None


def test_vanished_leaves_another_host_instances_alone():
    assert vanished(row(host="host-b", epoch=1, seq=1), "host-a", 100, 20, at(30)) is None


def test_vanished_leaves_an_already_deleted_instance_alone():
    assert vanished(row(deleted=True, epoch=100, seq=5), "host-a", 100, 20, at(30)) is None


def test_an_inventory_listing_an_instance_applies_like_an_event():
    # listed instances go through apply() with the inventory's (epoch, seq)
    listed = obs(event_type="host.inventory", seq=20, power_state="shutdown")
    after, outcome = apply(row(seq=10), listed)
    assert outcome is Outcome.APPLIED
    assert (after.power_state, after.last_event_type) == ("shutdown", "host.inventory")
    _, outcome = apply(row(seq=25), listed)
    assert outcome is Outcome.STALE


def test_a_record_maker_makes_what_its_class_makes():
    from consumer.apply_rules import new_instance_row, new_observation, record_maker
    from consumer.fold import FaultRow, HostRow, JournalRow
    values = ("u", "vm", "h", "running", False, 3, 9, "instance.started", T0, "booted", 2,
              None)
    assert len(values) == len(InstanceRow._fields)
    made = new_instance_row(values)
    assert type(made) is InstanceRow and made == InstanceRow(*values)
    assert made.event_occurred_at is T0 and made._replace(seq=10).seq == 10
    obs = ("u", "vm", "h", 3, 9, T0, "instance.started", "running", False, True, "booted")
    assert len(obs) == len(Observation._fields)
    assert type(new_observation(obs)) is Observation
    assert new_observation(obs) == Observation(*obs)
    for cls in (JournalRow, HostRow, FaultRow):
        values = tuple(range(len(cls._fields)))
        assert type(record_maker(cls)(values)) is cls
        assert record_maker(cls)(values) == cls(*values)


# -- why, how often, what went wrong: state_reason, reboots, last_fault --------------

def test_an_event_that_sets_a_power_state_sets_its_reason_and_keeps_the_faults():
    before = row(state_reason="booted", reboots=3, last_fault='{"seq":5}')
    after, outcome = apply(before, obs(state_reason="ioerror"))
    assert outcome is Outcome.APPLIED
    assert (after.power_state, after.state_reason, after.reboots, after.last_fault) == (
        "paused", "ioerror", 3, '{"seq":5}')
    after, _ = apply(before, obs(state_reason=None))  # a reason unknown is said so
    assert after.state_reason is None


def test_an_event_that_sets_no_power_state_leaves_its_reason():
    # a fault, a migration's step, a shutdown under way: the state and its reason stay
    before = row(power_state="paused", state_reason="ioerror", reboots=1)
    after, outcome = apply(before, obs(event_type="instance.watchdog", power_state=None,
                                       state_reason="ignored-without-a-state"))
    assert outcome is Outcome.APPLIED
    assert (after.power_state, after.state_reason, after.reboots) == ("paused", "ioerror", 1)
    assert (after.seq, after.last_event_type) == (11, "instance.watchdog")
    new, _ = apply(None, obs(power_state=None))
    assert (new.power_state, new.state_reason, new.reboots, new.last_fault) == (
        "pending", None, 0, None)


def test_an_instance_an_inventory_misses_loses_its_reason():
    gone = vanished(row(state_reason="booted", reboots=2), "host-a", 100, 20, at(5))
    assert (gone.deleted, gone.state_reason, gone.reboots) == (True, None, 2)


@pytest.mark.parametrize(("stored", "owner", "candidate", "replaces"), [
    (None, ("host-a", 100), ("host-a", 100, 5), True),                  # the first fault
    (("host-a", 100, 5), ("host-a", 100), ("host-a", 100, 6), True),    # newer, same host
    (("host-a", 100, 5), ("host-a", 101), ("host-a", 101, 1), True),    # a newer epoch
    (("host-a", 100, 5), ("host-a", 100), ("host-a", 100, 5), False),   # the same
    (("host-a", 100, 5), ("host-a", 100), ("host-a", 100, 4), False),   # older: out of order
    (("host-a", 100, 5), ("host-a", 100), ("host-a", 99, 999), False),  # an older epoch
    (None, ("host-b", 1), ("host-a", 100, 5), False),                   # not the owner's
    (("host-b", 1, 1), ("host-b", 1), ("host-a", 100, 9), False),       # the source, late
    (("host-a", 100, 5), ("host-b", 1), ("host-b", 1, 1), True),        # the new owner's
    (("host-a", 100, 5), ("host-a", 50), ("host-a", 50, 3), True),      # started over below
], ids=["first", "newer", "newer-epoch", "same", "older", "older-epoch", "not-the-owner",
        "migration-source-late", "new-owner", "host-started-over"])
def test_the_last_fault_is_the_owners_newest(stored, owner, candidate, replaces):
    from consumer.apply_rules import replaces_last_fault
    host, epoch = owner
    assert replaces_last_fault(stored, row(host=host, epoch=epoch), *candidate) is replaces
