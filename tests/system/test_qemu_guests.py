"""Real QEMU guests on qemu:///system: the database follows ``virsh domstate``."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import statistics

import pytest

from lab.pipeline import qemu_domain_xml, virsh
from lifecycle_common import timeutil

pytestmark = pytest.mark.system

URI = "qemu:///system"
# virsh domstate --reason -> the power states the database may show for it
ACCEPTED = {
    "running": {"running"},
    "paused": {"paused"},
    "shut off": {"shutdown"},
    "crashed": {"crashed"},
    "pmsuspended": {"suspended"},
}


@pytest.fixture
def guests(pipeline, qemu):
    names = [f"lc-{pipeline.tag}-{i}" for i in range(3)]
    for name in names:
        path = f"{pipeline.workdir}/{name}.xml"
        with open(path, "w") as f:
            f.write(qemu_domain_xml(name))
        virsh(URI, "define", path)
    yield names
    for name in names:
        virsh(URI, "destroy", name, check=False)
        virsh(URI, "undefine", name, check=False)


def accepted_states(name: str) -> set[str]:
    state, _, reason = virsh(URI, "domstate", "--reason", name).stdout.strip().partition(" (")
    if state == "shut off" and reason.startswith(("crashed", "failed")):
        return {"crashed", "shutdown"}  # a killed guest: stopped or crashed
    return ACCEPTED[state]


def database_matches_virsh(pipeline, guests):
    rows = {r["name"]: r for r in pipeline.instances(direct=True) if r["name"] in guests}
    if set(rows) != set(guests):
        return False
    return all(rows[n]["power_state"] in accepted_states(n) for n in guests) and rows


def qemu_pid(name: str) -> int:
    with open(f"/var/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read().strip())


def test_database_follows_real_guests(pipeline, guests, figure):
    pipeline.start_consumer()
    pipeline.start_agent("qemu-host", URI)
    g0, g1, g2 = guests
    steps = [
        (["start", g0], g0), (["start", g1], g1), (["start", g2], g2),
        (["suspend", g0], g0), (["resume", g0], g0),
        (["destroy", g1], g1), (["start", g1], g1),
        (["suspend", g2], g2), (["destroy", g2], g2), (["start", g2], g2),
    ]
    lags = []
    for argv, name in steps:
        virsh(URI, *argv)
        rows = pipeline.wait_for(lambda: database_matches_virsh(pipeline, guests), 20,
                                 f"database to match virsh after {' '.join(argv)}")
        lag = timeutil.parse(rows[name]["applied_at"]) - timeutil.parse(rows[name]["event_occurred_at"])
        lags.append(lag / datetime.timedelta(milliseconds=1))
    figure(f"real guests, {len(steps)} virsh steps: libvirt callback -> committed, "
           f"median (max {max(lags):.1f} ms)", statistics.median(lags))

    # kill -9 of a guest's QEMU process: libvirt reports STOPPED/FAILED.
    for name in (g1, g2):
        os.kill(qemu_pid(name), signal.SIGKILL)
        row = pipeline.wait_for_instance(name, timeout=30, direct=True,
                                         last_event_type="instance.crashed")
        assert row["power_state"] in ("crashed", "shutdown")
        lag = timeutil.parse(row["applied_at"]) - timeutil.parse(row["event_occurred_at"])
        figure(f"kill -9 of {name}'s qemu: libvirt callback -> committed",
               lag / datetime.timedelta(milliseconds=1))
        assert lag < datetime.timedelta(seconds=1)
        pipeline.wait_for(lambda: database_matches_virsh(pipeline, guests), 20,
                          f"database to match virsh after kill -9 of {name}")

    # And a killed guest starts again.
    virsh(URI, "start", g1)
    pipeline.wait_for(lambda: database_matches_virsh(pipeline, guests), 20,
                      "database to match virsh after restarting a killed guest")
    final = database_matches_virsh(pipeline, guests)
    assert final[g0]["power_state"] == "running"
    assert final[g1]["power_state"] == "running"
    assert final[g2]["power_state"] in ("crashed", "shutdown")
