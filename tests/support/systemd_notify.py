"""systemd's notification socket, played by a test: what a service under test tells
systemd (READY=1, WATCHDOG=1, STATUS=) arrives here, with WATCHDOG_USEC set as
systemd would set it."""

from __future__ import annotations

import socket
import time


class NotifySocket:
    """Where a service under test sends systemd's notifications."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def env(self, watchdog_seconds: float) -> dict:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(int(watchdog_seconds * 1e6))}

    def next(self, timeout: float) -> dict[str, str] | None:
        """The next notification's fields, or None if none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.splitlines())

    def wait_for(self, key: str, value_start: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            fields = self.next(remaining)
            if fields and fields.get(key, "").startswith(value_start):
                return fields
        raise AssertionError(f"no {key}={value_start}... notified within {timeout}s")

    def close(self) -> None:
        self.sock.close()


def assert_watchdog_fed(notify_socket, seconds: float, period: float) -> dict[str, str]:
    """For ``seconds``, no gap between two WATCHDOG=1 longer than ``period`` (systemd
    would restart the service past its WatchdogSec); returns the last STATUS seen."""
    last_fed = time.monotonic()
    status: dict[str, str] = {}
    end = last_fed + seconds
    while (remaining := end - time.monotonic()) > 0:
        fields = notify_socket.next(min(remaining, period))
        now = time.monotonic()
        if fields and "STATUS" in fields:
            status = fields
        if fields and fields.get("WATCHDOG") == "1":
            last_fed = now
        assert now - last_fed <= period, f"watchdog not fed for {now - last_fed:.1f}s"
    return status
