"""consumer.state_reasons: why an instance is in its state, in a word. Table-tested."""

from __future__ import annotations

import pytest

from consumer import state_reasons
from lifecycle_common.wire import limits

# (libvirt_event, libvirt_detail, libvirt_state, libvirt_reason) -> the word
OF_EVENT = [
    # The reason read after the event decides, where the agent read one (non-zero).
    (("SUSPENDED", "IOERROR", "PAUSED", 5), "ioerror"),
    (("SUSPENDED", "PAUSED", "PAUSED", 1), "user"),
    (("SUSPENDED", "WATCHDOG", "PAUSED", 6), "watchdog"),
    (("SUSPENDED", "API_ERROR", "PAUSED", 14), "api_error"),
    (("SUSPENDED", "POSTCOPY_FAILED", "PAUSED", 13), "postcopy_failed"),
    (("SUSPENDED", "PAUSED", "PAUSED", 2), "migration"),  # the state's own reason wins
    (("STARTED", "BOOTED", "RUNNING", 1), "booted"),
    (("RESUMED", "UNPAUSED", "RUNNING", 5), "unpaused"),
    (("STARTED", "RESTORED", "RUNNING", 3), "restored"),
    (("RESUMED", "MIGRATED", "RUNNING", 2), "migrated"),
    (("STARTED", "BOOTED", "RUNNING", 11), "postcopy_failed"),
    (("STOPPED", "SHUTDOWN", "SHUTOFF", 1), "shutdown"),
    (("STOPPED", "DESTROYED", "SHUTOFF", 2), "destroyed"),
    (("STOPPED", "CRASHED", "SHUTOFF", 3), "crashed"),
    (("STOPPED", "FAILED", "SHUTOFF", 6), "failed"),
    (("STOPPED", "SAVED", "SHUTOFF", 5), "saved"),
    (("STOPPED", "DESTROYED", "SHUTOFF", 8), "daemon"),
    (("CRASHED", "PANICKED", "CRASHED", 1), "panicked"),
    (("SHUTDOWN", "GUEST", "SHUTDOWN", 1), "user"),
    # A reason this table does not name: unknown, not the event's detail.
    (("SUSPENDED", "IOERROR", "PAUSED", 15), None),
    (("STARTED", "BOOTED", "RUNNING", 12), None),
    (("CRASHED", "PANICKED", "CRASHED", 2), None),
    (("STARTED", "BOOTED", "BLOCKED", 1), None),
    (("STARTED", "BOOTED", "PMSUSPENDED", 1), None),
    (("STARTED", "BOOTED", "NOSTATE", 1), None),
    (("STARTED", "BOOTED", "UNKNOWN_9", 3), None),
    (("STARTED", "BOOTED", "RUNNING", -1), None),
    # No reason read (no state, or reason 0): the event's own detail, in that vocabulary.
    (("SUSPENDED", "PAUSED", None, None), "user"),
    (("SUSPENDED", "MIGRATED", None, None), "migration"),
    (("SUSPENDED", "IOERROR", "PAUSED", 0), "ioerror"),
    (("SUSPENDED", "WATCHDOG", None, None), "watchdog"),
    (("SUSPENDED", "RESTORED", None, None), "restored"),
    (("SUSPENDED", "FROM_SNAPSHOT", None, None), "from_snapshot"),
    (("SUSPENDED", "API_ERROR", None, None), "api_error"),
    (("SUSPENDED", "POSTCOPY", None, None), "postcopy"),
    (("SUSPENDED", "POSTCOPY_FAILED", None, None), "postcopy_failed"),
    (("STARTED", "BOOTED", None, None), "booted"),
    (("STARTED", "WAKEUP", "RUNNING", 0), "wakeup"),
    (("RESUMED", "UNPAUSED", None, None), "unpaused"),
    (("RESUMED", "POSTCOPY_FAILED", None, None), "postcopy_failed"),
    (("STOPPED", "DESTROYED", None, None), "destroyed"),
    (("STOPPED", "FROM_SNAPSHOT", None, None), "from_snapshot"),
    (("CRASHED", "PANICKED", None, None), "panicked"),
    (("CRASHED", "CRASHLOADED", "CRASHED", 0), "crashloaded"),
    (("PMSUSPENDED", "MEMORY", None, None), "memory"),
    (("PMSUSPENDED", "DISK", None, None), "disk"),
    (("SHUTDOWN", "FINISHED", None, None), "finished"),
    (("SHUTDOWN", "HOST", None, None), "host"),
    (("UNDEFINED", "REMOVED", None, None), "removed"),
    # A definition says nothing of why; nor does a detail or event libvirt added later.
    (("DEFINED", "ADDED", None, None), None),
    (("DEFINED", "ADDED", "SHUTOFF", 0), None),
    (("SUSPENDED", "UNKNOWN_9", None, None), None),
    (("STOPPED", "UNKNOWN_7", "SHUTOFF", 0), None),
    (("UNKNOWN_12", "UNKNOWN_0", None, None), None),
    (("STARTED", "PAUSED", None, None), None),  # another event's detail
    (("STARTED", "BOOTED", "RUNNING", None), "booted"),
]


@pytest.mark.parametrize(("given", "word"), OF_EVENT, ids=[" ".join(map(str, g)) for g, _ in OF_EVENT])
def test_a_lifecycle_event_gives_its_state_the_reason_libvirt_names(given, word):
    assert state_reasons.of_event(*given) == word


def test_every_paused_reason_the_issue_names_comes_from_its_suspension():
    words = {state_reasons.of_event("SUSPENDED", detail, None, None)
             for detail in ("PAUSED", "MIGRATED", "IOERROR", "WATCHDOG", "API_ERROR", "POSTCOPY")}
    assert words == {"user", "migration", "ioerror", "watchdog", "api_error", "postcopy"}


def test_every_word_fits_the_column():
    words = set(state_reasons._BY_STATE_REASON.values()) | set(state_reasons._BY_DETAIL.values())
    assert max(map(len, words)) <= limits.STATE_REASON_LENGTH
    assert all(w == w.lower() and w.replace("_", "").isalpha() for w in words)


# (stored word, stored power state, entry's power state, libvirt state, reason) -> kept
THROUGH_INVENTORY = [
    (("ioerror", "paused", "paused", "PAUSED", 5), "ioerror"),
    (("panicked", "crashed", "crashed", "CRASHED", 1), "panicked"),
    (("destroyed", "shutdown", "shutdown", "SHUTOFF", 2), "destroyed"),
    (("ioerror", "paused", "paused", "PAUSED", 1), None),     # paused again, by a user
    (("ioerror", "paused", "paused", "PAUSED", 0), None),     # reason unknown
    (("ioerror", "paused", "running", "RUNNING", 5), None),   # another state
    (("user", "paused", "running", "PAUSED", 1), None),       # the power states differ
    ((None, "paused", "paused", "PAUSED", 5), None),          # an inventory tells no event
    (("booted", "running", "running", "RUNNING", 1), "booted"),
    (("booted", "running", "running", "UNKNOWN_9", 1), None),
]


@pytest.mark.parametrize(("given", "kept"), THROUGH_INVENTORY,
                         ids=[" ".join(map(str, g)) for g, _ in THROUGH_INVENTORY])
def test_an_inventory_keeps_a_reason_only_where_it_says_the_same(given, kept):
    assert state_reasons.kept_through_inventory(*given) == kept


def test_a_state_read_names_its_reason_unknown_for_zero():
    assert state_reasons.of_state("PAUSED", 5) == "ioerror"
    assert state_reasons.of_state("PAUSED", 0) == "unknown"
    assert state_reasons.of_state("PAUSED", 99) is None
    assert state_reasons.of_state("UNKNOWN_8", 1) is None
