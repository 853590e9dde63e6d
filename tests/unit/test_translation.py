"""libvirt (event, detail[, domain read after it]) -> (transition, power state), by table.

The expectations are written out here, not derived from the code under test: a change
in meaning must change this table.
"""

import pytest

from lifecycle_common.power_state import PowerState
from lifecycle_common.libvirt_codes import (
    DETAILS, CrashedDetail, DefinedDetail, DomainState, Event, JobType, PMSuspendedDetail,
    ResumedDetail, ShutdownDetail, ShutoffReason, StartedDetail, StoppedDetail,
    SuspendedDetail, UndefinedDetail)
from lifecycle_publisher.translation import (
    Observed, Transition, Translation, needs_job, power_state_of, translate)

T = Transition
P = PowerState

# (event, detail) -> (transition, power state), for the event alone (edge).
EDGE = {
    (Event.DEFINED, DefinedDetail.ADDED): (T.DEFINED, P.SHUTDOWN),
    (Event.DEFINED, DefinedDetail.UPDATED): (T.DEFINED, None),
    (Event.DEFINED, DefinedDetail.RENAMED): (T.DEFINED, None),
    (Event.DEFINED, DefinedDetail.FROM_SNAPSHOT): (T.DEFINED, None),

    (Event.UNDEFINED, UndefinedDetail.REMOVED): (T.UNDEFINED, None),
    (Event.UNDEFINED, UndefinedDetail.RENAMED): (T.IGNORED, None),

    (Event.STARTED, StartedDetail.BOOTED): (T.STARTED, P.RUNNING),
    (Event.STARTED, StartedDetail.MIGRATED): (T.ARRIVING, None),
    (Event.STARTED, StartedDetail.RESTORED): (T.STARTED, P.RUNNING),
    (Event.STARTED, StartedDetail.FROM_SNAPSHOT): (T.STARTED, P.RUNNING),
    (Event.STARTED, StartedDetail.WAKEUP): (T.STARTED, P.RUNNING),

    (Event.SUSPENDED, SuspendedDetail.PAUSED): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.MIGRATED): (T.PAUSED, P.PAUSED),  # no job read
    (Event.SUSPENDED, SuspendedDetail.IOERROR): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.WATCHDOG): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.RESTORED): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.FROM_SNAPSHOT): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.API_ERROR): (T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.POSTCOPY): (T.MIGRATING, None),
    (Event.SUSPENDED, SuspendedDetail.POSTCOPY_FAILED): (T.PAUSED, P.PAUSED),

    (Event.RESUMED, ResumedDetail.UNPAUSED): (T.RESUMED, P.RUNNING),
    (Event.RESUMED, ResumedDetail.MIGRATED): (T.RESUMED, P.RUNNING),
    (Event.RESUMED, ResumedDetail.FROM_SNAPSHOT): (T.RESUMED, P.RUNNING),
    (Event.RESUMED, ResumedDetail.POSTCOPY): (T.RESUMED, P.RUNNING),
    (Event.RESUMED, ResumedDetail.POSTCOPY_FAILED): (T.RESUMED, P.RUNNING),

    (Event.STOPPED, StoppedDetail.SHUTDOWN): (T.STOPPED, P.SHUTDOWN),
    (Event.STOPPED, StoppedDetail.DESTROYED): (T.STOPPED, P.SHUTDOWN),
    (Event.STOPPED, StoppedDetail.CRASHED): (T.CRASHED, P.CRASHED),
    (Event.STOPPED, StoppedDetail.MIGRATED): (T.MIGRATED, None),
    (Event.STOPPED, StoppedDetail.SAVED): (T.STOPPED, P.SHUTDOWN),
    (Event.STOPPED, StoppedDetail.FAILED): (T.CRASHED, P.CRASHED),
    (Event.STOPPED, StoppedDetail.FROM_SNAPSHOT): (T.STOPPED, P.SHUTDOWN),

    (Event.SHUTDOWN, ShutdownDetail.FINISHED): (T.SHUTTING_DOWN, None),
    (Event.SHUTDOWN, ShutdownDetail.GUEST): (T.SHUTTING_DOWN, None),
    (Event.SHUTDOWN, ShutdownDetail.HOST): (T.SHUTTING_DOWN, None),

    (Event.PMSUSPENDED, PMSuspendedDetail.MEMORY): (T.SUSPENDED, P.SUSPENDED),
    (Event.PMSUSPENDED, PMSuspendedDetail.DISK): (T.SUSPENDED, P.SUSPENDED),

    (Event.CRASHED, CrashedDetail.PANICKED): (T.CRASHED, P.CRASHED),
    (Event.CRASHED, CrashedDetail.CRASHLOADED): (T.CRASHED, P.CRASHED),
}

# Codes this libvirt does not know (a newer libvirt's): raw integers.
UNKNOWN = {
    (9, 0): (T.IGNORED, None),           # an event type added after CRASHED
    (255, 3): (T.IGNORED, None),
    (-1, 0): (T.IGNORED, None),
    # An unknown detail of a known event: the event alone decides.
    (int(Event.STARTED), 99): (T.STARTED, P.RUNNING),
    (int(Event.SUSPENDED), 99): (T.PAUSED, P.PAUSED),
    (int(Event.STOPPED), 99): (T.STOPPED, P.SHUTDOWN),
    (int(Event.DEFINED), 99): (T.DEFINED, None),
    (int(Event.UNDEFINED), 99): (T.UNDEFINED, None),
    (int(Event.SHUTDOWN), 99): (T.SHUTTING_DOWN, None),
}


def test_edge_table_covers_every_known_event_and_detail():
    every_pair = {(event, detail) for event, details in DETAILS.items() for detail in details}
    assert set(EDGE) == every_pair
    assert set(DETAILS) == set(Event)


@pytest.mark.parametrize(("event", "detail"), list(EDGE) + list(UNKNOWN),
                         ids=lambda v: getattr(v, "name", str(v)))
def test_translate_event_alone(event, detail):
    transition, power_state = {**EDGE, **UNKNOWN}[(event, detail)]
    assert translate(int(event), int(detail)) == Translation(transition, power_state)


@pytest.mark.parametrize(("event", "detail"), list(EDGE), ids=lambda v: v.name)
def test_domain_gone_after_the_event_leaves_the_edge_translation(event, detail):
    assert translate(event, detail, Observed(state=None)) == translate(event, detail)


# (event, detail, observed, previous) -> (transition, power state): the domain as read
# after the event decides the power state, except for migrations and ignored events.
LEVEL = [
    # a burst overtaken by the reader: started, then already paused again
    (Event.STARTED, StartedDetail.BOOTED, Observed(DomainState.PAUSED, 1), None,
     T.STARTED, P.PAUSED),
    # stopped then started at once (a reboot): running
    (Event.STOPPED, StoppedDetail.SHUTDOWN, Observed(DomainState.RUNNING, 1), None,
     T.STOPPED, P.RUNNING),
    (Event.STOPPED, StoppedDetail.DESTROYED, Observed(DomainState.SHUTOFF, ShutoffReason.CRASHED),
     None, T.STOPPED, P.CRASHED),
    (Event.STOPPED, StoppedDetail.FAILED, Observed(DomainState.SHUTOFF, ShutoffReason.FAILED),
     None, T.CRASHED, P.CRASHED),
    (Event.SHUTDOWN, ShutdownDetail.FINISHED, Observed(DomainState.SHUTOFF, ShutoffReason.SHUTDOWN),
     None, T.SHUTTING_DOWN, P.SHUTDOWN),
    (Event.DEFINED, DefinedDetail.UPDATED, Observed(DomainState.RUNNING, 1), None,
     T.DEFINED, P.RUNNING),
    (Event.PMSUSPENDED, PMSuspendedDetail.MEMORY, Observed(DomainState.PMSUSPENDED, 0), None,
     T.SUSPENDED, P.SUSPENDED),
    # SUSPENDED/MIGRATED: a migration job under way or completed means the guest leaves
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.PAUSED, 2, JobType.UNBOUNDED), None, T.MIGRATING, None),
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.PAUSED, 2, JobType.BOUNDED), None, T.MIGRATING, None),
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.PAUSED, 2, JobType.COMPLETED), None, T.MIGRATING, None),
    # ... no job, or a failed or cancelled one: the migration failed, the guest is paused
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.PAUSED, 2, JobType.NONE), None, T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.PAUSED, 2, JobType.FAILED), None, T.PAUSED, P.PAUSED),
    (Event.SUSPENDED, SuspendedDetail.MIGRATED,
     Observed(DomainState.RUNNING, 1, JobType.CANCELLED), None, T.PAUSED, P.RUNNING),
    # migration transitions never carry a power state, whatever the domain reads
    (Event.STARTED, StartedDetail.MIGRATED, Observed(DomainState.RUNNING, 1), None,
     T.ARRIVING, None),
    (Event.STOPPED, StoppedDetail.MIGRATED,
     Observed(DomainState.SHUTOFF, ShutoffReason.MIGRATED), None, T.MIGRATED, None),
    (Event.SUSPENDED, SuspendedDetail.POSTCOPY, Observed(DomainState.PAUSED, 2), None,
     T.MIGRATING, None),
    # nor do ignored events
    (Event.UNDEFINED, UndefinedDetail.RENAMED, Observed(DomainState.RUNNING, 1), None,
     T.IGNORED, None),
    (9, 0, Observed(DomainState.RUNNING, 1), None, T.IGNORED, None),
    # the source host removing a guest that migrated away is not a deletion
    (Event.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), T.MIGRATED, T.MIGRATED, None),
    (Event.UNDEFINED, UndefinedDetail.REMOVED, None, T.MIGRATED, T.MIGRATED, None),
    (Event.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), T.STOPPED, T.UNDEFINED, None),
    (Event.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), T.MIGRATING, T.UNDEFINED, None),
]


@pytest.mark.parametrize(("event", "detail", "observed", "previous", "transition", "power_state"),
                         LEVEL)
def test_translate_with_the_domain_read_after_the_event(event, detail, observed, previous,
                                                         transition, power_state):
    assert translate(event, detail, observed, previous) == Translation(transition, power_state)


def test_only_suspended_migrated_needs_the_migration_job():
    needing = {(e, d) for (e, d) in EDGE if needs_job(e, d)}
    assert needing == {(Event.SUSPENDED, SuspendedDetail.MIGRATED)}


# (domain state, reason) -> Nova's power state
POWER_STATES = {
    (DomainState.NOSTATE, 0): P.PENDING,
    (DomainState.RUNNING, 1): P.RUNNING,
    (DomainState.BLOCKED, 0): P.RUNNING,
    (DomainState.PAUSED, 1): P.PAUSED,
    (DomainState.SHUTDOWN, 1): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.UNKNOWN): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.DESTROYED): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.CRASHED): P.CRASHED,
    (DomainState.SHUTOFF, ShutoffReason.MIGRATED): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.SAVED): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.FAILED): P.CRASHED,
    (DomainState.SHUTOFF, ShutoffReason.FROM_SNAPSHOT): P.SHUTDOWN,
    (DomainState.SHUTOFF, ShutoffReason.DAEMON): P.SHUTDOWN,
    (DomainState.CRASHED, 1): P.CRASHED,
    (DomainState.PMSUSPENDED, 0): P.SUSPENDED,
    (8, 0): P.PENDING,     # a state this libvirt does not know
    (-1, 0): P.PENDING,
}


def test_power_state_table_covers_every_domain_state_and_shutoff_reason():
    states = {s for s, _ in POWER_STATES}
    assert set(DomainState) <= states
    shutoff_reasons = {r for s, r in POWER_STATES if s == DomainState.SHUTOFF}
    assert set(ShutoffReason) == shutoff_reasons


@pytest.mark.parametrize(("state", "reason"), list(POWER_STATES),
                         ids=lambda v: getattr(v, "name", str(v)))
def test_power_state_of(state, reason):
    assert power_state_of(int(state), int(reason)) == POWER_STATES[(state, reason)]


def test_reason_only_matters_for_shut_off_domains():
    # ShutoffReason.CRASHED is 3: for a running domain, reason 3 means something else
    assert power_state_of(DomainState.RUNNING, 3) == P.RUNNING
    assert power_state_of(DomainState.PAUSED, 6) == P.PAUSED


@pytest.mark.parametrize("transition", list(Transition))
def test_event_type_is_instance_dot_transition(transition):
    assert transition.event_type == "instance." + transition.value
