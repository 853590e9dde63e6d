"""Reads for lifecycle-manage: instances and hosts as plain dicts, in the JSON contract."""

from __future__ import annotations

import sqlalchemy as sa

from lifecycle_common import timeutil
from consumer.db.tables import hosts, instances


def _iso(moment) -> str | None:
    return None if moment is None else timeutil.isoformat(moment)


def list_instances(engine: sa.Engine, host: str | None = None,
                   include_deleted: bool = True) -> list[dict]:
    query = (sa.select(instances, hosts.c.status.label("host_status"))
             .select_from(instances.outerjoin(hosts, hosts.c.name == instances.c.host))
             .order_by(instances.c.host, instances.c.name, instances.c.uuid))
    if host is not None:
        query = query.where(instances.c.host == host)
    if not include_deleted:
        query = query.where(instances.c.deleted == sa.false())
    with engine.connect() as conn:
        return [{
            "uuid": r.uuid, "name": r.name, "host": r.host, "host_status": r.host_status,
            "power_state": r.power_state, "deleted": bool(r.deleted),
            "last_event_type": r.last_event_type, "epoch": r.epoch, "seq": r.seq,
            "event_occurred_at": _iso(r.event_occurred_at), "applied_at": _iso(r.applied_at),
        } for r in conn.execute(query)]


def list_hosts(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [{
            "name": r.name, "status": r.status, "agent_status": r.agent_status,
            "libvirt_connected": bool(r.libvirt_connected),
            "last_heartbeat_at": _iso(r.last_heartbeat_at), "epoch": r.epoch,
            "last_seq": r.last_seq, "updated_at": _iso(r.updated_at),
        } for r in conn.execute(sa.select(hosts).order_by(hosts.c.name))]
