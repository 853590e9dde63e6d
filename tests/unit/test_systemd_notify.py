"""systemd's notification protocol, spoken to a datagram socket of the test's own."""

from __future__ import annotations

import os
import socket

import pytest

from lifecycle_common import health, systemd
from lifecycle_common.health import Status


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def received(sock) -> list[str]:
    """Every datagram waiting, each as its set of lines."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return out


def reporting(status: Status):
    return lambda: health.report([health.Check("broker", status, f"broker {status.value}")])


def test_ready_once_then_watchdog_only_while_not_failing(notify_socket):
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    state = {"status": Status.DEGRADED, "ready": False}
    watchdog = systemd.Watchdog(systemd.Notifier(env), lambda: reporting(state["status"])(),
                                ready=lambda: state["ready"], environ=env)
    assert watchdog.feeds
    watchdog.tick()
    assert received(sock) == ["STATUS=degraded (broker: broker degraded)\nWATCHDOG=1"]
    state["ready"] = True
    watchdog.tick()
    assert received(sock) == ["READY=1\nWATCHDOG=1"]  # the status did not change
    state["status"] = Status.FAILING
    watchdog.tick()
    assert received(sock) == ["STATUS=failing (broker: broker failing)"]  # not fed
    watchdog.tick()
    assert received(sock) == []
    state["status"] = Status.OK
    watchdog.tick()
    assert received(sock) == ["STATUS=ok\nWATCHDOG=1"]


def test_a_watchdog_meant_for_another_process_is_not_fed(notify_socket):
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    watchdog = systemd.Watchdog(systemd.Notifier(env), reporting(Status.OK), lambda: True,
                                environ=env)
    watchdog.tick()
    assert received(sock) == ["READY=1\nSTATUS=ok"]


def test_the_thread_notifies_and_says_stopping(notify_socket):
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": path}
    watchdog = systemd.Watchdog(systemd.Notifier(env), reporting(Status.OK), lambda: True,
                                environ=env).start()
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=ok"
    watchdog.stop()
    assert sock.recv(4096).decode() == "STOPPING=1"


def test_without_systemd_nothing_is_sent():
    notifier = systemd.Notifier({})
    assert not notifier.enabled
    notifier.notify(READY="1")  # no socket, no error
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0


def test_an_abstract_socket_name_is_understood():
    name = f"lifecycle-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        systemd.Notifier({"NOTIFY_SOCKET": "@" + name}).notify(READY="1")
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()
