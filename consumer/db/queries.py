"""Reads for lifecycle-manage: instances, hosts and the journal's events as plain
dicts, in the JSON contract."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from lifecycle_common import timeutil
from consumer.db import engine as db_engine
from consumer.db.tables import hosts, instances, journal


def _iso(moment) -> str | None:
    return None if moment is None else timeutil.isoformat(moment)


def _instances_query():
    return (sa.select(instances, hosts.c.status.label("host_status"))
            .select_from(instances.outerjoin(hosts, hosts.c.name == instances.c.host)))


def _instance(r) -> dict:
    return {
        "uuid": r.uuid, "name": r.name, "host": r.host, "host_status": r.host_status,
        "power_state": r.power_state, "deleted": bool(r.deleted),
        "last_event_type": r.last_event_type, "epoch": r.epoch, "seq": r.seq,
        "event_occurred_at": _iso(r.event_occurred_at), "applied_at": _iso(r.applied_at),
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
                since: datetime.datetime | None = None, limit: int = 100) -> list[dict]:
    """The newest ``limit`` events of the journal (applied, stale or ignored), oldest
    first; only those about ``instance``, from ``host``, applied at or after ``since``
    (an aware datetime), as asked. Each carries the instance's name when the database
    knows the instance."""
    query = (sa.select(journal, instances.c.name.label("instance_name"))
             .select_from(journal.outerjoin(instances,
                                            instances.c.uuid == journal.c.instance_uuid))
             .order_by(journal.c.applied_at.desc(), journal.c.host.desc(),
                       journal.c.epoch.desc(), journal.c.seq.desc())
             .limit(limit))
    if instance is not None:
        query = query.where(journal.c.instance_uuid == instance)
    if host is not None:
        query = query.where(journal.c.host == host)
    if since is not None:
        query = query.where(journal.c.applied_at >= db_engine.naive_utc(since))
    with engine.connect() as conn:
        newest_first = [{
            "host": r.host, "epoch": r.epoch, "seq": r.seq, "event_type": r.event_type,
            "instance_uuid": r.instance_uuid, "instance_name": r.instance_name,
            "outcome": r.outcome, "occurred_at": _iso(r.occurred_at),
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
