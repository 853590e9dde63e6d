"""Why an instance is in its power state, in a word: ``instances.state_reason``. Pure;
table-tested (tests/unit/test_state_reasons.py).

The words are libvirt's names in lower case, one vocabulary whatever told it: the
reason libvirt gives for a domain's state (``virDomain<State>Reason``: a paused domain's
``user``, ``ioerror``, ``watchdog``...) or, where the agent did not read one, the detail
of the lifecycle event that set the state, named as that reason would be (a domain
suspended on an I/O error, ``SUSPENDED``/``IOERROR``, is paused for ``ioerror`` either
way). A code or name this table does not know says nothing: None, as for a defined
domain or an inventory (``fold`` keeps a stored word through an inventory only where
the inventory says the same).

Every word fits ``limits.STATE_REASON_LENGTH``: only the names below are ever returned.
"""

from __future__ import annotations

from typing import Optional

from lifecycle_common.libvirt_codes import DETAILS, STATE_REASONS, Event

# (state's name, reason code) -> the word: virDomain<State>Reason's names, lower case.
_BY_STATE_REASON = {(state.name, int(reason)): reason.name.lower()
                    for state, reasons in STATE_REASONS.items() for reason in reasons}

# A suspension's detail, named as the paused reason it leaves (virDomainPausedReason).
_SUSPENDED = {
    "PAUSED": "user", "MIGRATED": "migration", "IOERROR": "ioerror", "WATCHDOG": "watchdog",
    "RESTORED": "restored", "FROM_SNAPSHOT": "from_snapshot", "API_ERROR": "api_error",
    "POSTCOPY": "postcopy", "POSTCOPY_FAILED": "postcopy_failed",
}
# The other events' details (virDomainEvent<Event>DetailType), each its own word. A
# definition says nothing of why (DEFINED: none).
_BY_DETAIL = {("SUSPENDED", detail): word for detail, word in _SUSPENDED.items()}
_BY_DETAIL.update({(event.name, detail.name): detail.name.lower()
                   for event, details in DETAILS.items()
                   if event not in (Event.DEFINED, Event.SUSPENDED) for detail in details})


def of_event(libvirt_event: str, libvirt_detail: str, libvirt_state: Optional[str],
             libvirt_reason: Optional[int]) -> Optional[str]:
    """The reason a lifecycle event that sets a power state gives it: the reason of the
    state read after the event where the agent read one (a non-zero reason: 0 is
    libvirt's "unknown"), else the event's own detail; None where unknown."""
    if libvirt_reason and libvirt_state is not None:
        return _BY_STATE_REASON.get((libvirt_state, libvirt_reason))
    return _BY_DETAIL.get((libvirt_event, libvirt_detail))


def of_state(libvirt_state: str, libvirt_reason: int) -> Optional[str]:
    """The word for a domain's state and reason as read (an inventory's entry):
    ``unknown`` for reason 0, None for a state or code this table does not know."""
    return _BY_STATE_REASON.get((libvirt_state, libvirt_reason))


def kept_through_inventory(stored: Optional[str], stored_power_state: str,
                           power_state: str, libvirt_state: str,
                           libvirt_reason: int) -> Optional[str]:
    """The reason an inventory entry leaves on a row: the stored one where the entry
    says the same (the same power state, for the same reason), else None (an inventory
    tells no event, and the state may have changed since the word was told)."""
    if (stored is not None and power_state == stored_power_state
            and of_state(libvirt_state, libvirt_reason) == stored):
        return stored
    return None
