"""A three-node RabbitMQ cluster of the tests' own, in network namespaces (lab):
quorum queues across nodes, a silent partition under pause_minority and its healing, a
killed node rejoining, a rolling restart, and nothing left behind.

The tests run in order on one cluster (the module's ``rabbit_cluster``); each starts from
a healed cluster with all three nodes running, and uses queues of its own. Timings are
printed (``pytest -s``) and summed up by the last test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from lab import netlab
from lab.rabbit_cluster import RabbitCluster, cluster_processes, wait_until
from lab.rabbit_node import OWNER_VAR

pytestmark = pytest.mark.integration

TIMINGS: dict[str, float] = {}
# What the tests saw clients get, for the summary.
OBSERVED: dict[str, str] = {}


def note(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds
    print(f"\n[cluster timing] {name}: {seconds:.2f} s")


def connect(cluster: RabbitCluster, i: int) -> amqp.Connection:
    """A py-amqp connection from the root namespace to node ``i``, as the cluster's
    administrator; ``basic_publish`` waits for the broker's confirm."""
    host, port = cluster.amqp_address(i)
    conn = amqp.Connection(host=f"{host}:{port}", userid=cluster.admin_user,
                           password=cluster.admin_password, connect_timeout=5,
                           confirm_publish=True)
    conn.connect()
    return conn


@contextlib.contextmanager
def connection(cluster: RabbitCluster, i: int) -> Iterator[amqp.Connection]:
    conn = connect(cluster, i)
    try:
        yield conn
    finally:
        drop(conn)


def drop(conn: amqp.Connection) -> None:
    """Close ``conn`` if the broker still answers, else just drop its socket."""
    try:
        if conn.connected:
            conn.transport.sock.settimeout(5)
            conn.close()
    except (OSError, amqp.exceptions.AMQPError):
        pass
    finally:
        conn.collect()


def declare_quorum_queue(conn: amqp.Connection, label: str) -> str:
    name = f"qq-{label}-{secrets.token_hex(3)}"
    conn.channel().queue_declare(name, durable=True, auto_delete=False,
                                 arguments={"x-queue-type": "quorum"})
    return name


def publish(conn: amqp.Connection, queue: str, bodies: list[bytes], *,
            retry_nacks: bool = False) -> list[bytes]:
    """Publish each body persistently; each ``basic_publish`` returns once confirmed
    (``amqp.exceptions.MessageNacked`` on a nack). With ``retry_nacks``, a nacked body
    is published again, on a new channel (for 30 s at most), as an agent does; returns
    the bodies nacked, once per nack."""
    channel = conn.channel()
    nacked: list[bytes] = []
    for body in bodies:
        deadline = time.monotonic() + 30
        while True:
            try:
                channel.basic_publish(amqp.Message(body, delivery_mode=2), exchange="",
                                      routing_key=queue, mandatory=True, confirm_timeout=30)
                break
            except amqp.exceptions.MessageNacked:
                nacked.append(body)
                if not retry_nacks or time.monotonic() >= deadline:
                    raise
                # RabbitMQ 3.10.8: a channel whose quorum-queue client started while the
                # queue's leader was unreachable keeps sending to that stale leader and
                # nacks every publish; a new channel reads the new leader.
                channel.close()
                channel = conn.channel()
    channel.close()
    return nacked


def take_all(conn: amqp.Connection, queue: str) -> list[bytes]:
    """Every message of ``queue`` (acked), by basic.get."""
    channel = conn.channel()
    bodies = []
    while (message := channel.basic_get(queue)) is not None:
        bodies.append(message.body)
        channel.basic_ack(message.delivery_tag)
    channel.close()
    return bodies


def message_count(conn: amqp.Connection, queue: str) -> int:
    return conn.channel().queue_declare(queue, passive=True).message_count


def tcp_connect_outcome(address: tuple[str, int], timeout: float = 2.0) -> str:
    """'connected', 'refused' or 'timed out': what a TCP connect to ``address`` does."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return "connected"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timed out"


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


ROOT_NETNS = os.readlink("/proc/self/ns/net")


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def machine_processes() -> set[tuple[int, str]]:
    """(pid, name) of every beam.smp and epmd running in the root network namespace
    now: the machine's broker, its epmd, and RabbitNodes' (other labs' nodes run in
    namespaces of their own, and come and go)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                name = (proc / "comm").read_text().strip()
                if name in ("beam.smp", "epmd") and _netns(int(proc.name)) == ROOT_NETNS:
                    found.add((int(proc.name), name))
    return found


# At collection, before the module's cluster starts: every beam.smp and epmd of the root
# namespace, and those of them that are not a RabbitNode of some test (which come and
# go): the machine's broker and its epmd.
BEFORE = machine_processes()
MACHINE_BROKER = {(pid, name) for pid, name in BEFORE if OWNER_VAR not in _environ(pid)}


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> RabbitCluster:
    """The module's cluster, healed and with every node running clustered."""
    rabbit_cluster.lab.heal()
    rabbit_cluster.wait_for_cluster([1, 2, 3], timeout=90, restart_hung=True)
    return rabbit_cluster


# -- the cluster ---------------------------------------------------------------------------

def test_three_nodes_run_clustered_in_namespaces_of_their_own(cluster: RabbitCluster):
    note("cluster start (3 nodes booted, 2 joined)", cluster.startup_seconds or 0.0)
    nodes = [cluster.node(i) for i in (1, 2, 3)]
    assert cluster.running_nodes() == sorted(nodes)
    assert cluster.partitions() == {}
    assert [n.split("@")[1] for n in nodes] == [cluster.hostname(i) for i in (1, 2, 3)]
    for i in (1, 2, 3):
        host, port = cluster.amqp_address(i)
        assert port == 5672 and host == cluster.lab.address(f"n{i}")
        # epmd and the distribution port listen on the namespace's address, reachable
        # from the root namespace through the lab's router.
        assert tcp_connect_outcome((host, 4369)) == "connected"
        assert tcp_connect_outcome((host, 25672)) == "connected"
    url = cluster.transport_url(order=[3, 1])
    assert url.startswith("rabbit://admin:") and url.endswith(
        f"@{cluster.amqp_address(3)[0]}:5672,admin:{cluster.admin_password}"
        f"@{cluster.amqp_address(1)[0]}:5672/")


def test_quorum_queue_published_on_node1_is_consumed_on_node3(cluster: RabbitCluster):
    bodies = [f"m{n}".encode() for n in range(20)]
    with connection(cluster, 1) as conn1:
        queue = declare_quorum_queue(conn1, "basic")
        publish(conn1, queue, bodies)
    listed = json.loads(cluster.ctl(2, "list_queues", "name", "type", "members",
                                    "--formatter", "json"))
    (entry,) = [row for row in listed if row["name"] == queue]
    assert entry["type"] == "quorum"
    assert sorted(entry["members"]) == sorted(cluster.node(i) for i in (1, 2, 3))
    received: list[bytes] = []
    with connection(cluster, 3) as conn3:
        channel = conn3.channel()
        channel.basic_qos(0, 5, False)

        def on_message(message: amqp.Message) -> None:
            received.append(message.body)
            channel.basic_ack(message.delivery_tag)
        channel.basic_consume(queue, callback=on_message)
        deadline = time.monotonic() + 15
        while len(received) < len(bodies) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn3.drain_events(timeout=0.5)
        channel.queue_delete(queue)
    assert received == bodies


# -- a partition ---------------------------------------------------------------------------

def test_partition_pauses_the_minority_and_heals(cluster: RabbitCluster):
    lab = cluster.lab
    before = [f"before-{n}".encode() for n in range(10)]
    during = [f"during-{n}".encode() for n in range(10)]
    conn1 = connect(cluster, 1)
    try:
        queue = declare_quorum_queue(conn1, "partition")
        publish(conn1, queue, before)

        began = time.monotonic()
        lab.partition([["n1"], ["n2", "n3"]])
        assert lab.cuts == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
        # pause_minority: node 1 stops its RabbitMQ application, closing its clients.
        closed_by: BaseException | None = None
        deadline = began + 30
        while closed_by is None:
            assert time.monotonic() < deadline, "node 1 kept its client connection for 30 s"
            try:
                conn1.drain_events(timeout=0.2)
            except TimeoutError:
                continue
            except (OSError, amqp.exceptions.AMQPError) as error:
                closed_by = error
        note("partition -> node 1's client connection closed", time.monotonic() - began)
        OBSERVED["client of the paused node got"] = f"{type(closed_by).__name__}: {closed_by}"
        wait_until(lambda: not cluster.is_running(1), 30, "node 1 to pause")
        note("partition -> node 1 paused (rabbit not running)", time.monotonic() - began)
        wait_until(lambda: cluster.running_nodes(via=2) == [cluster.node(2), cluster.node(3)],
                   30, "nodes 2 and 3 to see node 1 gone")
        note("partition -> majority reports [n2, n3] running", time.monotonic() - began)
        # The paused node's VM runs (its CLI answers) but its AMQP listener is closed.
        assert cluster.ctl(1, "eval", "node().").strip() == f"'{cluster.node(1)}'"
        assert tcp_connect_outcome(cluster.amqp_address(1)) == "refused"
    finally:
        drop(conn1)

    with connection(cluster, 2) as conn2:  # the majority keeps the queue available
        published = time.monotonic()
        # While the majority elects a new leader for the queue (its leader was on node
        # 1), a publish may be nacked: published again, as an agent does.
        nacked = publish(conn2, queue, during, retry_nacks=True)
        note("publish of 10 through node 2 during the partition", time.monotonic() - published)
        OBSERVED["publishes nacked through node 2 while the queue elected a leader"] = \
            str(len(nacked))
        if nacked:
            print(f"\n[cluster] {len(nacked)} publishes through node 2 nacked (then "
                  "republished on a new channel)")

    # Cut from the clients as well: a connect now times out instead of being refused.
    lab.cut_client("n1")
    assert tcp_connect_outcome(cluster.amqp_address(1)) == "timed out"
    assert tcp_connect_outcome(cluster.amqp_address(2)) == "connected"

    healing = time.monotonic()
    # Node 1 resumes by itself; if its boot hangs in global:sync (RabbitMQ 3.10.8 on
    # Erlang >= 25.1, rabbitmq-server#6034), heal() restarts it and says so.
    restarted = cluster.heal(timeout=90)
    assert lab.cuts == set()
    note("heal -> all three nodes running clustered", time.monotonic() - healing)
    if restarted:
        OBSERVED["nodes restarted after healing (boot hung in global:sync)"] = repr(restarted)
        warnings.warn(f"after healing, nodes {restarted} hung in global:sync and were "
                      "restarted (rabbitmq-server#6034: RabbitMQ < 3.10.10 on Erlang >= 25.1)")
    OBSERVED["partitions reported after healing"] = repr(cluster.partitions())
    assert cluster.partitions() == {}
    with connection(cluster, 1) as conn1:
        wait_until(lambda: message_count(conn1, queue) >= 20, 30, "the queue to hold 20")
        received = take_all(conn1, queue)
        conn1.channel().queue_delete(queue)
    # Nothing lost, in order; only a nacked body may have been enqueued twice.
    assert [body for n, body in enumerate(received) if body not in received[:n]] == \
        before + during
    duplicated = {body for body in received if received.count(body) > 1}
    assert duplicated <= set(nacked), f"duplicates of confirmed messages: " \
                                      f"{duplicated - set(nacked)}"


# -- a killed node, a rolling restart ------------------------------------------------------

def test_a_killed_node_rejoins(cluster: RabbitCluster):
    first = [f"first-{n}".encode() for n in range(10)]
    second = [f"second-{n}".encode() for n in range(10)]
    with connection(cluster, 2) as conn2:
        queue = declare_quorum_queue(conn2, "kill")
        publish(conn2, queue, first)
    killed = time.monotonic()
    cluster.kill9(1)
    wait_until(lambda: cluster.running_nodes(via=3) == [cluster.node(2), cluster.node(3)],
               30, "nodes 2 and 3 to see node 1 gone")
    note("kill -9 node 1 -> majority reports [n2, n3] running", time.monotonic() - killed)
    with connection(cluster, 3) as conn3:
        publish(conn3, queue, second)
    restarted = time.monotonic()
    cluster.start_node(1)
    note("start_node(1) -> rejoined, all three running", time.monotonic() - restarted)
    assert cluster.running_nodes(via=1) == sorted(cluster.node(i) for i in (1, 2, 3))
    with connection(cluster, 1) as conn1:
        wait_until(lambda: message_count(conn1, queue) == 20, 30, "the queue to hold 20")
        assert take_all(conn1, queue) == first + second
        conn1.channel().queue_delete(queue)


def test_rolling_restart_loses_nothing_from_a_quorum_queue(cluster: RabbitCluster):
    bodies = [f"roll-{n}".encode() for n in range(100)]
    with connection(cluster, 1) as conn1:
        queue = declare_quorum_queue(conn1, "roll")
        publish(conn1, queue, bodies)
    began = time.monotonic()
    per_node = cluster.rolling_restart()
    note("rolling restart of three nodes", time.monotonic() - began)
    for i, seconds in per_node.items():
        note(f"  rolling restart: node {i} stop+start+rejoin", seconds)
    assert cluster.running_nodes() == sorted(cluster.node(i) for i in (1, 2, 3))
    with connection(cluster, 2) as conn2:
        wait_until(lambda: message_count(conn2, queue) == 100, 30, "the queue to hold 100")
        assert take_all(conn2, queue) == bodies
        conn2.channel().queue_delete(queue)


# -- nothing left --------------------------------------------------------------------------

def test_destroy_leaves_nothing_and_the_machine_broker_as_found(rabbit_cluster: RabbitCluster):
    lab_id = rabbit_cluster.lab.id
    namespaces = rabbit_cluster.lab.namespaces
    began = time.monotonic()
    rabbit_cluster.destroy()
    rabbit_cluster.destroy()  # idempotent
    note("destroy (nodes, epmd, lab, directories)", time.monotonic() - began)

    assert netlab.leftovers(lab_id) == {"namespaces": [], "root_links": [],
                                        "netns_dirs": [], "records": []}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10, check=True).stdout
    assert not any(space in listed for space in namespaces)
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, timeout=10,
                            check=True).stdout
    assert f"dev {lab_id}c" not in routes
    assert not rabbit_cluster.directory.exists()
    assert cluster_processes(lab_id) == []
    now = machine_processes()
    assert MACHINE_BROKER <= now, f"the machine broker's processes are gone: " \
                                  f"{MACHINE_BROKER - now}"
    # A new epmd in the root namespace would be ours leaking: the cluster's run in
    # its namespaces (and RabbitNodes use the machine's epmd).
    leaked = {(pid, name) for pid, name in now - BEFORE if name == "epmd"}
    assert not leaked, f"epmd started in the root namespace: {leaked}"

    # The machine's broker still serves its guest on 127.0.0.1:5672.
    conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest",
                           connect_timeout=5)
    conn.connect()
    try:
        assert conn.server_properties["product"] == "RabbitMQ"
    finally:
        conn.close()

    print("\n[cluster timing] summary:")
    for name, seconds in TIMINGS.items():
        print(f"  {name}: {seconds:.2f} s")
    for what, text in OBSERVED.items():
        print(f"  {what}: {text}")
    print(f"  nodes restarted because their boot hung: {rabbit_cluster.hung_restarts}")
