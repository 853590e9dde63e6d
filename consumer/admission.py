"""Which messages from the bus the consumer applies. Pure: no I/O, and it never raises.

Every message is hostile until proven otherwise. ``admit`` reads one message and says
what becomes of it:
- ``Admitted``: a notification of ours that may be applied;
- ``Foreign``: a well-formed notification from another publisher sharing the exchange
  and topic (nova's own, say): nothing to apply, nothing wrong either; acked;
- ``Refused``: dead-lettered with the reason, changing nothing. A message cannot be
  read (whatever the exception), its publisher may not speak for the host it names,
  or it claims an epoch or a moment beyond the consumer's clock.

Publisher identity: RabbitMQ refuses a message whose AMQP ``user_id`` property is not
the user the publisher logged in as, and the agent sets it on every message; so with
``host_user`` a message about host H (a lifecycle event, a fault, an inventory or a
heartbeat: each payload names its host) is accepted only from H's own broker user
(``publisher_user_template`` formatted with H) or a listed trusted publisher.

No clock is believed here: an epoch is a counter of the agent's starts and
``occurred_at`` is the host's own account of when libvirt saw the event, shown to
operators and used for latency; neither decides anything (DESIGN.md, "Time: whose
clock decides"). So a message is never refused for what a host's clock says: a host
whose clock is hours ahead is applied like any other (the store records and reports
its offset). With ``host_user``, only a publisher allowed to speak for the host can
set its epoch.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Union

from lifecycle_common import wire
from lifecycle_common.wire import compiled_decode
from lifecycle_common.wire.vocabulary import PUBLISHER_PREFIX

AGENT_PUBLISHER_PREFIX = PUBLISHER_PREFIX  # the agents' publisher_id begins with it


class PublisherIdentity(str, enum.Enum):
    ANY = "any"              # every broker user may speak for every host
    HOST_USER = "host_user"  # host H only through its own user, or a trusted one


_USERS_CACHED = 65536  # hosts whose user a Policy remembers, at most


@dataclasses.dataclass(frozen=True)
class Policy:
    identity: PublisherIdentity = PublisherIdentity.ANY
    user_template: str = "{host}"
    trusted: frozenset[str] = frozenset()
    # host -> its user, as formatted already (a dict: an lru_cache on the method would
    # hash the whole policy at every call, 0.4 microseconds a message).
    _users: dict = dataclasses.field(default_factory=dict, compare=False, hash=False,
                                     repr=False)

    def user_for(self, host: str) -> str:
        """The broker user that may speak for ``host``: the template formatted."""
        users = self._users
        user = users.get(host)
        if user is None:
            if len(users) >= _USERS_CACHED:
                users.clear()
            user = users[host] = self.user_template.format(host=host)
        return user


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    note: wire.Notification


@dataclasses.dataclass(frozen=True, slots=True)
class Foreign:
    publisher_id: str


class Cause(str, enum.Enum):
    """Why a message was dead-lettered, in a word (for counting; the reason says more)."""
    UNREADABLE = "unreadable"  # not a notification this version can read
    PUBLISHER = "publisher"    # its publisher may not speak for its host
    CLOCK = "clock"            # no longer given (clocks decide nothing): dead letters of old
    DATABASE = "database"      # the database refused it
    APPLY = "apply"            # applying it raised


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    cause: Cause = Cause.UNREADABLE


Verdict = Union[Admitted, Foreign, Refused]


def admit(body: bytes | str, user_id: Optional[str], now: float, policy: Policy) -> Verdict:
    """What becomes of one message; ``user_id`` is its AMQP property (None when unset).
    ``now``, the consumer's clock, decides nothing any more (kept for callers).

    The body is read by ``compiled_decode.decode``: ``wire.decode``'s verdict and
    reason, about three times faster for our own notifications."""
    try:
        note = compiled_decode.decode(body)
    except wire.WireError as exc:
        publisher = _foreign_publisher(body)
        return Foreign(publisher) if publisher is not None else Refused(str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever a hostile body makes decoding raise
        return Refused(f"cannot be decoded: {type(exc).__name__}: {exc}")
    try:
        reason = identity_refusal(note, user_id, policy)
        if reason:
            return Refused(reason, Cause.PUBLISHER)
    except Exception as exc:  # noqa: BLE001 - e.g. a template that fails for this host
        return Refused(f"cannot be checked: {type(exc).__name__}: {exc}", Cause.UNREADABLE)
    return Admitted(note)


def identity_refusal(note: wire.Notification, user_id: Optional[str],
                     policy: Policy) -> Optional[str]:
    """Why the publisher may not speak for the host the notification is about."""
    if policy.identity is PublisherIdentity.ANY:
        return None
    host = note.payload.host
    expected = policy.user_for(host)
    if user_id == expected or user_id in policy.trusted:
        return None
    who = "a message without user_id" if not user_id else f"user {user_id!r}"
    return (f"{who} may not speak for host {host!r}: publisher_identity = host_user "
            f"accepts only user {expected!r} or a trusted publisher")


def _foreign_publisher(body: bytes | str) -> Optional[str]:
    """The publisher of a well-formed notification that is not the agents', or None."""
    try:
        message = wire.envelope.unwrap(body)
    except Exception:  # noqa: BLE001 - not even an envelope: not foreign, refused
        return None
    publisher = message.get("publisher_id")
    if isinstance(publisher, str) and not publisher.startswith(AGENT_PUBLISHER_PREFIX):
        return publisher
    return None
