"""Reads for lifecycle-manage: instances, hosts, the journal's events and the
instances' faults as plain dicts, in the JSON contract."""

from __future__ import annotations

import datetime
import json
from typing import Collection, Optional

import sqlalchemy as sa

from lifecycle_common import timeutil
from consumer.db import engine as db_engine
from consumer.db.tables import faults, hosts, instances, journal


def _iso(moment) -> str | None:
    return None if moment is None else timeutil.isoformat(moment)


def _json_object(text: Optional[str]) -> Optional[dict]:
    """A JSON object column (``instances.last_fault``, ``faults.fields``) as a dict;
    None when NULL. A value that is not a JSON object (it never should be) is None
    rather than an error, so that one bad row does not hide every other."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _instances_query():
    return (sa.select(instances, hosts.c.status.label("host_status"))
            .select_from(instances.outerjoin(hosts, hosts.c.name == instances.c.host)))


def _instance(r) -> dict:
    return {
        "uuid": r.uuid, "name": r.name, "host": r.host, "host_status": r.host_status,
        "power_state": r.power_state, "deleted": bool(r.deleted),
        "last_event_type": r.last_event_type, "epoch": r.epoch, "seq": r.seq,
        "event_occurred_at": _iso(r.event_occurred_at), "applied_at": _iso(r.applied_at),
        "state_reason": r.state_reason, "last_fault": _json_object(r.last_fault),
        "reboots": r.reboots,
    }


def list_instances(engine: sa.Engine, host: str | None = None,
                   include_deleted: bool = True) -> list[dict]:
    query = _instances_query().order_by(instances.c.host, instances.c.name, instances.c.uuid)
    if host is not None:
        query = query.where(instances.c.host == host)
    if not include_deleted:
        query = query.where(instances.c.deleted == sa.false())
    with engine.connect() as conn:
        return [_instance(r) for r in conn.execute(query)]


def get_instance(engine: sa.Engine, uuid: str) -> dict | None:
    """One instance as ``list_instances`` shows it, or None if the database has none
    with that uuid."""
    with engine.connect() as conn:
        row = conn.execute(_instances_query().where(instances.c.uuid == uuid)).one_or_none()
    return None if row is None else _instance(row)


def list_events(engine: sa.Engine, instance: str | None = None, host: str | None = None,
                since: datetime.datetime | None = None, limit: int = 100,
                event_types: Optional[Collection[str]] = None) -> list[dict]:
    """The newest ``limit`` events of the journal (applied, stale or ignored), oldest
    first; only those about ``instance``, from ``host``, applied at or after ``since``
    (an aware datetime), of one of ``event_types``, as asked. Each carries the
    instance's name when the database knows the instance, and ``fault``: for a fault
    (or a panic) the faults table kept, ``{"count": N, **its fields}``, else None."""
    query = (sa.select(journal, instances.c.name.label("instance_name"),
                       faults.c.count.label("fault_count"),
                       faults.c.fields.label("fault_fields"))
             .select_from(journal
                          .outerjoin(instances, instances.c.uuid == journal.c.instance_uuid)
                          .outerjoin(faults, sa.and_(faults.c.host == journal.c.host,
                                                     faults.c.epoch == journal.c.epoch,
                                                     faults.c.seq == journal.c.seq)))
             .order_by(journal.c.applied_at.desc(), journal.c.host.desc(),
                       journal.c.epoch.desc(), journal.c.seq.desc())
             .limit(limit))
    if instance is not None:
        query = query.where(journal.c.instance_uuid == instance)
    if host is not None:
        query = query.where(journal.c.host == host)
    if since is not None:
        query = query.where(journal.c.applied_at >= db_engine.naive_utc(since))
    if event_types is not None:
        query = query.where(journal.c.event_type.in_(sorted(event_types)))
    with engine.connect() as conn:
        newest_first = [{
            "host": r.host, "epoch": r.epoch, "seq": r.seq, "event_type": r.event_type,
            "instance_uuid": r.instance_uuid, "instance_name": r.instance_name,
            "outcome": r.outcome, "occurred_at": _iso(r.occurred_at),
            "applied_at": _iso(r.applied_at), "fault": _fault(r.fault_count, r.fault_fields),
        } for r in conn.execute(query)]
    return newest_first[::-1]


def _fault(count: Optional[int], fields: Optional[str]) -> Optional[dict]:
    if count is None:  # no row in faults: not a fault
        return None
    return {"count": count, **_own_fields(fields, ("count",))}


# The keys of a fault of ``list_faults`` that are its row's columns; the others are
# its own fields.
FAULT_KEYS = ("host", "epoch", "seq", "event_type", "occurred_at", "first_occurred_at",
              "count", "applied_at")


def _own_fields(text: Optional[str], reserved) -> dict:
    """A fault's own fields (``faults.fields``) without any key that would stand for
    one of the row's columns (none ever does: the payloads name none of them)."""
    return {k: v for k, v in (_json_object(text) or {}).items() if k not in reserved}


def list_faults(engine: sa.Engine, instance: str, limit: int = 20) -> list[dict]:
    """The newest ``limit`` faults of ``instance`` (by when the last occurrence each
    stands for occurred), oldest first: ``{"host", "epoch", "seq", "event_type",
    "occurred_at", "first_occurred_at", "count", **fields, "applied_at"}``."""
    query = (sa.select(faults).where(faults.c.instance_uuid == instance)
             .order_by(faults.c.occurred_at.desc(), faults.c.host.desc(),
                       faults.c.epoch.desc(), faults.c.seq.desc())
             .limit(limit))
    with engine.connect() as conn:
        newest_first = [{
            "host": r.host, "epoch": r.epoch, "seq": r.seq, "event_type": r.event_type,
            "occurred_at": _iso(r.occurred_at),
            "first_occurred_at": _iso(r.first_occurred_at), "count": r.count,
            **_own_fields(r.fields, FAULT_KEYS),
            "applied_at": _iso(r.applied_at),
        } for r in conn.execute(query)]
    return newest_first[::-1]


def list_hosts(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [{
            "name": r.name, "status": r.status, "agent_status": r.agent_status,
            "libvirt_connected": bool(r.libvirt_connected),
            "last_heartbeat_at": _iso(r.last_heartbeat_at), "epoch": r.epoch,
            "last_seq": r.last_seq, "updated_at": _iso(r.updated_at),
            "clock_offset": None if r.clock_offset is None else round(r.clock_offset, 3),
        } for r in conn.execute(sa.select(hosts).order_by(hosts.c.name))]
