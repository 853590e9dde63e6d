"""Network namespaces of the tests' own (lab.netlab): routes from the root
namespace, silent one-way cuts, partitions and healing, teardown and reaping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netlab import CLIENT, NetLab, leftovers, reap_leftovers, run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Run in a namespace: "tcp HOST PORT" prints connected/refused/timed out;
# "udp-send HOST PORT" sends one datagram; "udp-recv PORT" prints what arrives in 2 s.
PROBE = """
import socket, sys
mode, *args = sys.argv[1:]
if mode == "tcp":
    try:
        socket.create_connection((args[0], int(args[1])), timeout=1).close()
        print("connected")
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timed out")
elif mode == "udp-send":
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", (args[0], int(args[1])))
elif mode == "udp-recv":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(args[0])))
    print("ready", flush=True)
    sock.settimeout(2)
    try:
        print(sock.recvfrom(64)[0].decode())
    except TimeoutError:
        print("nothing")
"""


def probe(lab: NetLab, member: str, *args: str) -> str:
    return run([*lab.exec_prefix(member), sys.executable, "-c", PROBE, *args],
               timeout=10).stdout.strip()


def udp_arrives(lab: NetLab, source: str, destination: str) -> bool:
    receiver = subprocess.Popen(
        [*lab.exec_prefix(destination), sys.executable, "-c", PROBE, "udp-recv", "7001"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        probe(lab, source, "udp-send", lab.address(destination), "7001")
        return receiver.stdout.readline().strip() == "hello"
    finally:
        receiver.kill()
        receiver.wait(timeout=10)


@pytest.fixture
def lab(netns_available) -> NetLab:
    with NetLab(["n1", "n2", "n3"]) as made:
        yield made


def test_addresses_and_routes_reach_every_member_from_the_root(lab: NetLab):
    assert lab.client_address == f"10.{lab.octet}.0.2"
    assert [lab.address(m) for m in lab.members] == [f"10.{lab.octet}.{i}.2" for i in (1, 2, 3)]
    assert 200 <= lab.octet <= 250
    assert all(len(name) <= 15 for member in [CLIENT, *lab.members]
               for name in lab._links(member))
    server = ("import socket, time\n"
              "s = socket.create_server(('0.0.0.0', 7000))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    listener = subprocess.Popen([*lab.exec_prefix("n2"), sys.executable, "-c", server],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        assert probe(lab, CLIENT, "tcp", lab.address("n2"), "7000") == "connected"
        assert probe(lab, "n1", "tcp", lab.address("n2"), "7000") == "connected"
        assert probe(lab, "n1", "tcp", lab.address("n3"), "7000") == "refused"
        lab.cut_client("n2")
        assert probe(lab, CLIENT, "tcp", lab.address("n2"), "7000") == "timed out"
        assert probe(lab, "n1", "tcp", lab.address("n2"), "7000") == "connected"
        lab.cut("n1", "n3")  # silent: not refused any more, but timed out
        assert probe(lab, "n1", "tcp", lab.address("n3"), "7000") == "timed out"
        lab.heal()
        assert probe(lab, CLIENT, "tcp", lab.address("n2"), "7000") == "connected"
    finally:
        listener.kill()
        listener.wait(timeout=10)


def test_a_cut_drops_one_direction_only(lab: NetLab):
    assert udp_arrives(lab, "n1", "n2") and udp_arrives(lab, "n2", "n1")
    lab.cut("n1", "n2")
    assert lab.cuts == {("n1", "n2")}
    assert not udp_arrives(lab, "n1", "n2")
    assert udp_arrives(lab, "n2", "n1")
    assert udp_arrives(lab, "n1", "n3")


def test_partition_isolate_and_heal_are_sets_of_directed_cuts(lab: NetLab):
    lab.partition([["n1"], ["n2", "n3"]])
    assert lab.cuts == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
    lab.heal()
    lab.isolate("n3")
    assert lab.cuts == {(a, b) for other in ("n1", "n2", CLIENT)
                        for a, b in (("n3", other), (other, "n3"))}
    lab.heal()
    assert lab.cuts == set()
    assert "blackhole" not in run(["ip", "-n", lab.router, "rule"]).stdout
    with pytest.raises(ValueError, match="more than one group"):
        lab.partition([["n1"], ["n1", "n2"]])


def test_destroy_kills_what_runs_inside_and_leaves_nothing(netns_available):
    lab = NetLab(["a", "b"]).create()
    lab.hosts_file("a", {"peer": lab.address("b")}, hostname="a-host")
    assert run([*lab.exec_prefix("a"), "getent", "hosts", "peer"]).stdout.split()[0] == \
        lab.address("b")
    sleeper = subprocess.Popen([*lab.exec_prefix("b"), "sleep", "300"])
    lab.destroy()
    lab.destroy()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert leftovers(lab.id) == {"namespaces": [], "root_links": [], "netns_dirs": [],
                                 "records": []}
    assert f"dev {lab.id}c" not in run(["ip", "route"]).stdout


def test_a_lab_whose_owner_died_is_reaped(netns_available):
    script = ("import os, signal, subprocess\n"
              "from lab.netlab import NetLab\n"
              "lab = NetLab(['x']).create()\n"
              "sleeper = subprocess.Popen([*lab.exec_prefix('x'), 'sleep', '300'],\n"
              "                           stdout=subprocess.DEVNULL,\n"
              "                           stderr=subprocess.DEVNULL, start_new_session=True)\n"
              "print(lab.id, sleeper.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout, f"the owner did not make its lab: {result.stderr}"
    lab_id, sleeper = result.stdout.split()
    try:
        assert leftovers(lab_id)["namespaces"] == [f"{lab_id}-r", f"{lab_id}-x"]
        assert _alive(int(sleeper)), "the sleeper should outlive its killed owner"
        assert lab_id in reap_leftovers()
        assert leftovers(lab_id) == {"namespaces": [], "root_links": [], "netns_dirs": [],
                                     "records": []}
        deadline = time.monotonic() + 5
        while _alive(int(sleeper)):
            assert time.monotonic() < deadline, "the lab's process survived reaping"
            time.sleep(0.05)
    finally:
        reap_leftovers()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (neither gone nor a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
