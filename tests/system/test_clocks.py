"""Hosts whose clocks are wrong: real agent processes on libfaketime, a real consumer.

Only the consumer's clock decides anything (DESIGN.md, "Time: whose clock decides"):
a host is up while its heartbeats arrive, whatever moment its clock writes in them; its
epoch is a counter that a start with a wrong clock does not pin in the future; its
events apply in its own sequence. Each case below: nothing lost (every sequence number
the agent assigned is in the journal), nothing stale (no journal row says stale), the
database as libvirt has it, and the host up in every sample taken while it beats.
"""

from __future__ import annotations

import time

import pytest

from lab.fake_clock import FakeClock, library
from lab.pipeline import virsh

pytestmark = pytest.mark.system

URI = "test+unix:///default"
HOST = "clock-host"
VIRSH_STATES = {"running": "running", "paused": "paused", "shut off": "shutdown"}


@pytest.fixture
def clock(tmp_path):
    if library() is None:
        message = "libfaketime is not installed: run tools/bootstrap.sh (Debian's faketime)"
        if __import__("os").environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return FakeClock(tmp_path)


def host_row(pipeline) -> dict | None:
    return next((h for h in pipeline.hosts(direct=True) if h["name"] == HOST), None)


def drive(pipeline, name: str, samples: list[str], rounds: int = 2) -> None:
    """Start, suspend, resume and destroy the domain ``rounds`` times, each step seen
    in the database, sampling the host's status between steps and for a while after."""
    steps = [("start", "running"), ("suspend", "paused"), ("resume", "running"),
             ("destroy", "shutdown")]
    for _ in range(rounds):
        for verb, state in steps:
            virsh(URI, verb, name)
            pipeline.wait_for_instance(name, direct=True, power_state=state)
            samples.append(host_row(pipeline)["status"])
    # Several heartbeat intervals and more than host_down_after of sampling.
    deadline = time.monotonic() + pipeline.host_down_after + 2
    while time.monotonic() < deadline:
        samples.append(host_row(pipeline)["status"])
        time.sleep(0.25)


def check_everything_applied_in_order(pipeline, name: str) -> None:
    engine = pipeline._db()  # noqa: SLF001 - the tests' own reading of the journal
    import sqlalchemy as sa
    from consumer.db.tables import journal
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journal.c.seq, journal.c.outcome)
                            .where(journal.c.host == HOST)).all()
    seqs = sorted(seq for seq, _ in rows)
    last = host_row(pipeline)["last_seq"]
    assert seqs == list(range(1, last + 1)), f"lost or doubled: {seqs} (last {last})"
    assert not [r for r in rows if r.outcome == "stale"], rows
    want = VIRSH_STATES[virsh(URI, "domstate", name).stdout.strip()]
    pipeline.wait_for_instance(name, direct=True, power_state=want)


def test_a_start_two_hours_ahead_then_the_right_clock(pipeline, clock, domain):
    """The hardware clock before chrony steps it: the epoch of that start is the clock's
    (a new state reads it once); the next start, with the right clock, is the next
    number, not pinned two hours ahead; neither start's events are refused."""
    pipeline.start_consumer()
    clock.set(+7200)
    pipeline.start_agent(HOST, URI, env=clock.env())
    ahead = host_row(pipeline)
    assert ahead["epoch"] > time.time() + 7000  # a new state: its epoch is that clock's
    assert ahead["clock_offset"] == pytest.approx(7200, abs=60)
    samples: list[str] = []
    drive(pipeline, domain, samples, rounds=1)
    pipeline.stop_process(f"agent-{HOST}")

    clock.set(0)
    pipeline.start_agent(HOST, URI, env=clock.env())
    right = host_row(pipeline)
    assert right["epoch"] == ahead["epoch"] + 1  # a counter: the clock is not read again
    drive(pipeline, domain, samples, rounds=1)
    assert set(samples) == {"up"}, samples
    assert abs(host_row(pipeline)["clock_offset"]) < 60
    check_everything_applied_in_order(pipeline, domain)
    consumer_log = pipeline.log("consumer")
    assert "dead-lettered" not in consumer_log
    assert "its clock is 7" in consumer_log  # the consumer said the host's clock was off


@pytest.mark.parametrize("offset", [-40.0, +200.0])
def test_a_steady_skew(pipeline, clock, domain, offset):
    """40 s behind (well within max_clock_skew) used to flap the host down: liveness
    compared the heartbeat's own moment with the consumer's clock."""
    pipeline.start_consumer()
    clock.set(offset)
    pipeline.start_agent(HOST, URI, env=clock.env())
    samples: list[str] = []
    drive(pipeline, domain, samples)
    assert set(samples) == {"up"}, samples
    assert host_row(pipeline)["clock_offset"] == pytest.approx(offset, abs=5)
    check_everything_applied_in_order(pipeline, domain)


def test_a_step_backwards_mid_run(pipeline, clock, domain):
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI, env=clock.env())
    samples: list[str] = []
    drive(pipeline, domain, samples, rounds=1)
    clock.set(-120)  # the host's time service steps its clock two minutes back
    drive(pipeline, domain, samples, rounds=1)
    clock.set(+30)
    drive(pipeline, domain, samples, rounds=1)
    assert set(samples) == {"up"}, samples
    check_everything_applied_in_order(pipeline, domain)
