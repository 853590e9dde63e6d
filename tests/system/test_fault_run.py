"""The short form of the fault run (``./tools/bench --only faults`` has them all): four
``lifecycle-agent`` processes, each on a libvirtd of its own, a ``lifecycle-consumer``
on a PostgreSQL primary with a synchronous standby, a RabbitMQ node of the test's own,
all under a steady stream of changes; an agent's clock stepped back, the instances
table locked, a failover to the standby, the queue nacking every publish, an agent's
outbox on a full disk. After each heal the loss checker must come out clean: nothing
lost (the events a full disk refused are counted by the agent, never silently
dropped), nothing applied twice or out of order, the database as libvirt has it,
nothing dead-lettered; and each fault must have happened (its evidence)."""

from __future__ import annotations

import os

import pytest

from benchmarks import faults, harness
from lab.fake_clock import library
from lab.pg_pair import postgresql_installed
from tests.conftest import require_service
from tests.support.fixtures import require_rabbitmq

pytestmark = pytest.mark.system


def _libfaketime() -> None:
    if library() is None:
        raise FileNotFoundError("libfaketime (apt-get install faketime)")


def _root() -> None:
    if os.geteuid() != 0:
        raise PermissionError("a tmpfs and libvirtd as nobody need root")


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """One pipeline for the module's faults, in turn (each heals); everything it started
    removed at the end, also when a fault failed."""
    require_rabbitmq()
    require_service("PostgreSQL 15 programs", postgresql_installed)
    require_service("libfaketime", _libfaketime)
    require_service("root", _root)
    run = harness.Run(harness.Profile.make(quick=True, soak_seconds=0),
                      str(tmp_path_factory.mktemp("fault-run")))
    runner = faults.FaultRun(run, domains=30, rate=80.0, converge_timeout=90.0)
    try:
        yield runner.start()
    finally:
        run.cleanup()  # the runner: node, database pair, daemons, processes, tmpfs


@pytest.mark.parametrize("fault", [pytest.param(name, id=name) for name in faults.SHORT])
def test_a_fault_loses_nothing(fault_run, fault):
    r = fault_run.fault(fault, faults.SHORT[fault])
    print(f"\n{fault}: {r.events} events in {r.seconds:.1f}s, {r.applied_during} applied "
          f"before the heal; converged {r.converge_seconds:.1f}s after the heal; {r.note}")
    assert r.events > 0
    assert (r.lost, r.applied_twice, r.out_of_order, r.difference) == (0, 0, 0, 0), r
    assert r.dead_letters == 0, r
    assert r.converged, r
    assert r.gaps == r.not_written, r  # every number missing was refused by a full disk
    evidence = r.evidence
    if fault == "clock-step-back":
        assert evidence["clock_offsets_seen"]["h0"] == pytest.approx(-120, abs=10), r
    elif fault == "database-stall":
        assert evidence["lock_waiters"] >= 1 and r.applied_during < r.events / 10, r
    elif fault == "postgresql-failover":
        assert evidence["consumer_back_after_s"] is not None, r  # on the new primary
    elif fault == "nack-storm":
        assert evidence["nacks"] > 0, r
    elif fault == "outbox-disk-full":
        assert r.not_written > 0, r
    else:
        raise AssertionError(f"no evidence checked for {fault}")
    assert fault_run.whole_run(seconds=1.0).clean


def test_the_checker_sees_a_number_missing_and_a_row_wrong(fault_run):
    """The same checker, after the faults, given a journal with a number removed and an
    instance row that says otherwise than libvirt: it must report both."""
    import datetime

    import sqlalchemy as sa
    host = fault_run.names[3]
    with fault_run.engine.begin() as conn:
        key = conn.execute(sa.text(
            "DELETE FROM journal WHERE (host, epoch, seq) = (SELECT host, epoch, seq FROM "
            "journal WHERE host = :h ORDER BY epoch DESC, seq DESC LIMIT 1) "
            "RETURNING host, epoch, seq"), {"h": host}).one()
        conn.execute(sa.text(
            "UPDATE instances SET power_state = 'crashed' WHERE uuid = (SELECT uuid FROM "
            "instances WHERE host = :h ORDER BY uuid LIMIT 1)"), {"h": host})
    check = fault_run.check({h: (0, 0) for h in fault_run.names}, datetime.datetime.min)
    # The number removed is missing beside those a full disk refused (counted).
    assert check.lost == 1 and check.verdict.lost == check.not_written + 1, (key, check)
    assert check.verdict.difference == 1, check
    assert not check.clean
