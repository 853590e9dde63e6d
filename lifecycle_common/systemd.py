"""systemd's service notifications (``Type=notify``, ``WatchdogSec``), spoken on the
datagram socket systemd names in ``NOTIFY_SOCKET``; without it (not under systemd)
every call does nothing.

- ``READY=1`` once the service is connected and doing its job;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, but only while the service's health is
  not failing: systemd then kills and restarts a service that stays failing longer
  than ``WatchdogSec`` (its outbox, or the broker's queue, keeps what was not done);
- ``STATUS=`` the health in a line, shown by ``systemctl status``;
- ``STOPPING=1`` when a clean stop begins.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Mapping, Optional

from lifecycle_common.health import Report
from lifecycle_common.threads import named_thread

LOG = logging.getLogger(__name__)


def _address(environ: Mapping[str, str]) -> Optional[str]:
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path  # "@": the abstract namespace


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """Seconds within which systemd expects a ``WATCHDOG=1``, or None (no watchdog, or
    one meant for another process)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        self._address = _address(environ)
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str) -> None:
        """Send ``KEY=value`` lines (``notify(READY="1", STATUS="...")``)."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with self._lock:
            try:
                self._sock.sendto(message, self._address)
            except OSError as exc:  # systemd gone or restarting: nothing to tell
                LOG.debug("sd_notify %s failed: %s", message, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Feeds systemd's watchdog while ``health()`` is not failing, tells systemd the
    service is ready once ``ready()`` first says so, and keeps ``STATUS=`` current."""

    def __init__(self, notifier: Notifier, health: Callable[[], Report],
                 ready: Callable[[], bool], interval: Optional[float] = None,
                 environ: Mapping[str, str] = os.environ):
        self._notifier = notifier
        self._health = health
        self._ready = ready
        timeout = watchdog_interval(environ)
        self.feeds = timeout is not None
        # Half the watchdog's timeout (systemd's own advice); status every 5 s otherwise.
        self._interval = interval or (timeout / 2 if timeout else 5.0)
        self._stop = threading.Event()
        self._told_ready = False
        self._last_status = ""
        self._thread = named_thread(self._run, "sd-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        if self._notifier.enabled:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._notifier.notify(STOPPING="1")

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(min(self._interval, 1.0) if not self._told_ready else self._interval):
                return

    def tick(self) -> None:
        """One round: ready (once), status (when it changed), watchdog (unless failing)."""
        try:
            report = self._health()
        except Exception as exc:  # noqa: BLE001 - a broken check counts as failing
            LOG.error("health check raised %s: %s; not feeding the watchdog",
                      type(exc).__name__, exc)
            return
        fields: dict[str, str] = {}
        if not self._told_ready and self._ready():
            fields["READY"] = "1"
            self._told_ready = True
        status = report.summary()
        if status != self._last_status:
            fields["STATUS"] = status[:400]
            self._last_status = status
        if self.feeds and not report.failing:
            fields["WATCHDOG"] = "1"
        if fields:
            self._notifier.notify(**fields)
