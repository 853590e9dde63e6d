"""Renaming a host in the database (``lifecycle-manage host rename``): its instances
and its row pass to the new name; the journal keeps the history under the old one.

An agent refuses to start over a state recorded for another host name (its waiting
events name their host, and its epochs and sequence are that host's), so a rename is
done with the agent stopped and its outbox empty: the database is renamed here, then
the agent starts under its new name with a new state, whose first inventory (new_state)
makes its epoch the host's newest.
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from consumer.db.tables import hosts, instances


class UnknownHost(LookupError):
    """The database knows no host by that name (no host row, no instance)."""


@dataclasses.dataclass(frozen=True)
class Renamed:
    instances: int     # instance rows moved to the new name
    merged: bool       # the new name had a row already (its agent started first): kept


def rename(engine: sa.Engine, old: str, new: str) -> Renamed:
    """Move ``old``'s instances and host row to ``new``, in one transaction."""
    if old == new:
        raise ValueError("the old and the new name are the same")
    with engine.begin() as conn:
        old_row = conn.execute(sa.select(hosts.c.name).where(hosts.c.name == old)
                               .with_for_update()).one_or_none()
        moved = conn.execute(instances.update().where(instances.c.host == old)
                             .values(host=new)).rowcount
        if old_row is None and not moved:
            raise UnknownHost(old)
        merged = conn.execute(sa.select(hosts.c.name).where(hosts.c.name == new)
                              .with_for_update()).one_or_none() is not None
        if old_row is not None:
            if merged:
                conn.execute(hosts.delete().where(hosts.c.name == old))
            else:
                conn.execute(hosts.update().where(hosts.c.name == old).values(name=new))
    return Renamed(instances=moved, merged=merged)
