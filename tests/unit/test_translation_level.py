"""Level-triggered translation: the domain's state read after the event decides the
power state, except for migrations; the migration job tells a migration from a pause;
the source's undefine after a migration is not a deletion."""

import pytest

from lifecycle_common.power_state import PowerState as P
from lifecycle_common.libvirt_codes import (
    DefinedDetail, DomainState as S, Event as E, JobType as J, ResumedDetail, ShutoffReason,
    StartedDetail, StoppedDetail, SuspendedDetail, UndefinedDetail)
from lifecycle_publisher.translation import Observed, Transition as T, translate

CASES = [
    # event, detail, observed, previous -> transition, power state
    (E.STARTED, StartedDetail.BOOTED, Observed(S.PAUSED), None, T.STARTED, P.PAUSED),
    (E.STARTED, StartedDetail.BOOTED, Observed(None), None, T.STARTED, P.RUNNING),
    (E.STARTED, StartedDetail.BOOTED, None, None, T.STARTED, P.RUNNING),
    (E.SUSPENDED, SuspendedDetail.PAUSED, Observed(S.RUNNING), None, T.PAUSED, P.RUNNING),
    (E.DEFINED, DefinedDetail.UPDATED, Observed(S.RUNNING), None, T.DEFINED, P.RUNNING),
    (E.DEFINED, DefinedDetail.ADDED, Observed(S.SHUTOFF), None, T.DEFINED, P.SHUTDOWN),
    (E.STOPPED, StoppedDetail.FAILED, Observed(S.SHUTOFF, ShutoffReason.FAILED), None,
     T.CRASHED, P.CRASHED),
    (E.STOPPED, StoppedDetail.CRASHED, Observed(S.SHUTOFF, ShutoffReason.CRASHED), None,
     T.CRASHED, P.CRASHED),
    (E.STOPPED, StoppedDetail.DESTROYED, Observed(S.SHUTOFF, ShutoffReason.DESTROYED), None,
     T.STOPPED, P.SHUTDOWN),
    (E.STOPPED, StoppedDetail.DESTROYED, Observed(S.RUNNING), None, T.STOPPED, P.RUNNING),
    (E.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), None, T.UNDEFINED, None),
    # migration: a job under way or completed means leaving, not pausing
    (E.SUSPENDED, SuspendedDetail.MIGRATED, Observed(S.PAUSED, job=J.UNBOUNDED), None,
     T.MIGRATING, None),
    (E.SUSPENDED, SuspendedDetail.MIGRATED, Observed(S.PAUSED, job=J.COMPLETED), None,
     T.MIGRATING, None),
    (E.SUSPENDED, SuspendedDetail.MIGRATED, Observed(S.RUNNING, job=J.FAILED), None,
     T.PAUSED, P.RUNNING),
    (E.SUSPENDED, SuspendedDetail.MIGRATED, Observed(S.PAUSED, job=J.CANCELLED), None,
     T.PAUSED, P.PAUSED),
    (E.SUSPENDED, SuspendedDetail.MIGRATED, Observed(S.PAUSED, job=None), None,
     T.PAUSED, P.PAUSED),
    (E.SUSPENDED, SuspendedDetail.MIGRATED, None, None, T.PAUSED, P.PAUSED),
    (E.SUSPENDED, SuspendedDetail.POSTCOPY, Observed(S.PAUSED), None, T.MIGRATING, None),
    (E.STARTED, StartedDetail.MIGRATED, Observed(S.PAUSED), None, T.ARRIVING, None),
    (E.RESUMED, ResumedDetail.MIGRATED, Observed(S.RUNNING), None, T.RESUMED, P.RUNNING),
    (E.STOPPED, StoppedDetail.MIGRATED, Observed(None), None, T.MIGRATED, None),
    (E.STOPPED, StoppedDetail.MIGRATED, Observed(S.SHUTOFF, ShutoffReason.MIGRATED), None,
     T.MIGRATED, None),
    (E.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), T.MIGRATED, T.MIGRATED, None),
    (E.UNDEFINED, UndefinedDetail.REMOVED, Observed(None), T.STOPPED, T.UNDEFINED, None),
    # unknown codes stay ignored whatever the state says
    (99, 0, Observed(S.RUNNING), None, T.IGNORED, None),
]


@pytest.mark.parametrize("event, detail, observed, previous, transition, power", CASES)
def test_level_triggered_translation(event, detail, observed, previous, transition, power):
    result = translate(int(event), int(detail), observed, previous)
    assert (result.transition, result.power_state) == (transition, power)
