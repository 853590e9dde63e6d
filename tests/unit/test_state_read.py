"""state_read_needed, by table: for every event it spares the read, translation gives
the same transition and power state without the read as with the state libvirt leaves
the domain in after that event; the events it reads are those whose translation the
read can change."""

from __future__ import annotations

import pytest

from lifecycle_common import libvirt_codes as codes
from lifecycle_common.libvirt_codes import DomainState as S
from lifecycle_common.libvirt_codes import Event as E
from lifecycle_common.libvirt_codes import JobType as J
from lifecycle_common.libvirt_codes import ShutoffReason as R
from lifecycle_common.libvirt_codes import StoppedDetail
from lifecycle_publisher.outbox_writer import state_read_needed
from lifecycle_publisher.translation import MIGRATION, Observed, Transition, translate

DETAILS = {E.DEFINED: codes.DefinedDetail, E.UNDEFINED: codes.UndefinedDetail,
           E.STARTED: codes.StartedDetail, E.SUSPENDED: codes.SuspendedDetail,
           E.RESUMED: codes.ResumedDetail, E.STOPPED: codes.StoppedDetail,
           E.SHUTDOWN: codes.ShutdownDetail, E.PMSUSPENDED: codes.PMSuspendedDetail,
           E.CRASHED: codes.CrashedDetail}
EVERY_EVENT = [(event, detail) for event, kind in DETAILS.items() for detail in kind]

_STOPPED_REASON = {StoppedDetail.SHUTDOWN: R.SHUTDOWN, StoppedDetail.DESTROYED: R.DESTROYED,
                   StoppedDetail.CRASHED: R.CRASHED, StoppedDetail.MIGRATED: R.MIGRATED,
                   StoppedDetail.SAVED: R.SAVED, StoppedDetail.FAILED: R.FAILED,
                   StoppedDetail.FROM_SNAPSHOT: R.FROM_SNAPSHOT}


def state_after(event: E, detail: int) -> Observed:
    """The domain as libvirt leaves it once the event happened (nothing after it)."""
    if event in (E.STARTED, E.RESUMED):
        return Observed(S.RUNNING)
    if event is E.SUSPENDED:
        return Observed(S.PAUSED)
    if event is E.STOPPED:
        return Observed(S.SHUTOFF, _STOPPED_REASON[detail])
    if event is E.PMSUSPENDED:
        return Observed(S.PMSUSPENDED)
    raise AssertionError(f"no single state after {event!r}")


SPARED = [(e, d) for e, d in EVERY_EVENT if not state_read_needed(int(e), int(d))]
READ = [(e, d) for e, d in EVERY_EVENT if state_read_needed(int(e), int(d))]


def test_the_events_of_a_burst_are_spared_the_read():
    for event in (E.STARTED, E.SUSPENDED, E.RESUMED, E.STOPPED):
        assert (event, 0) in SPARED


def observations(event: E, detail: int) -> list[Observed]:
    """What a read could find after the event: the state libvirt leaves the domain in;
    for a migration or an ignored event, anything (the read must not matter at all)."""
    edge = translate(int(event), int(detail))
    if edge.transition in MIGRATION or edge.transition is Transition.IGNORED:
        return [Observed(None)] + [Observed(state, reason) for state in S for reason in R]
    return [state_after(event, detail)]


@pytest.mark.parametrize("event, detail", SPARED)
def test_an_event_spared_the_read_translates_as_with_it(event, detail):
    for observed in observations(event, detail):
        for previous in (None, *Transition):  # whatever came before on this host
            without = translate(int(event), int(detail), None, previous)
            read = translate(int(event), int(detail), observed, previous)
            assert (without.transition, without.power_state) == (
                read.transition, read.power_state), (observed, previous)


@pytest.mark.parametrize("event, detail", READ)
def test_an_event_read_after_is_one_whose_translation_the_read_can_change(event, detail):
    without = translate(int(event), int(detail))
    changed = [translate(int(event), int(detail), Observed(state, job=job))
               for state in S for job in (None, J.UNBOUNDED)]
    assert any((t.transition, t.power_state) != (without.transition, without.power_state)
               for t in changed)


def test_a_migration_pause_is_read_for_its_job():
    assert state_read_needed(E.SUSPENDED, codes.SuspendedDetail.MIGRATED)
    assert translate(E.SUSPENDED, codes.SuspendedDetail.MIGRATED,
                     Observed(S.PAUSED, job=J.UNBOUNDED)).transition is Transition.MIGRATING
