"""The short form of the cluster fault run (``./tools/bench --only cluster`` has them all):
a three-node RabbitMQ cluster of the test's own, each node in a network namespace,
quorum queues, pause_minority; agents and two competing consumers under steady load;
a partition, kill -9 of the node most clients use, the database unreachable. After each
heal the loss checker must come out clean: nothing lost, nothing applied twice or out of
order, the database as libvirt has it, nothing dead-lettered."""

from __future__ import annotations

import pytest

from benchmarks import cluster, harness
from tests.support.fixtures import require_netns, require_rabbitmq

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """One cluster and pipeline for the module's faults, in turn (each heals)."""
    require_rabbitmq()
    require_netns()
    run = harness.Run(harness.Profile.make(quick=True, soak_seconds=0),
                      str(tmp_path_factory.mktemp("cluster-faults")))
    runner = cluster.FaultRun(run, hosts=4, domains=30, rate=80.0, converge_timeout=120.0)
    try:
        yield runner.start()
    finally:
        run.cleanup()  # the runner, its cluster and namespaces, the database


@pytest.mark.parametrize("fault", [pytest.param(name, id=name) for name in cluster.SHORT])
def test_a_fault_loses_nothing(fault_run, fault):
    result = fault_run.fault(fault, cluster.SHORT[fault])
    print(f"\n{fault}: {result.events} events in {result.seconds:.1f}s, "
          f"{result.applied_during} applied before the heal; converged "
          f"{result.converge_seconds:.1f}s after the heal; {result.note}")
    v = result.verdict
    assert result.events > 0
    assert (v.lost, v.applied_twice, v.out_of_order, v.difference) == (0, 0, 0, 0), v
    assert result.dead_letters == 0
    if fault != "database-unreachable":
        # The pipeline kept going during the fault: the agents whose node lost the
        # majority gave it up (confirm_timeout), the consumers moved to the majority.
        assert result.applied_during >= result.events / 2, result
    whole = fault_run.whole_run()
    assert whole.clean and whole.stamped > result.events, whole
