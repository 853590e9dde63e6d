"""Host liveness: a host whose heartbeats stopped is marked down, on a thread of its own.

It runs on its own schedule (every ``min(host_down_after / 3, 5)`` seconds) and takes its
own connection from the pool, with the same timeouts, so that a batch held while the
database is unavailable, or stuck in a statement, does not keep silent hosts up. Each
pass records whether the database answered it (``DatabaseHealth.liveness``).
"""

from __future__ import annotations

import logging
import threading
import time

from consumer.database_health import DatabaseHealth
from consumer.errors import DatabaseUnavailable

LOG = logging.getLogger(__name__)

_MAX_INTERVAL = 5.0


class HostLiveness:
    def __init__(self, store, down_after: float, database: DatabaseHealth):
        self._store = store
        self._down_after = down_after
        self._database = database
        self.interval = min(down_after / 3, _MAX_INTERVAL)
        self.host_counts: dict[str, int] = {"up": 0, "down": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run passes on a thread until ``stop``; the first at once."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="host-liveness", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; a pass in progress is waited for up to ``timeout`` seconds
        (it is bounded by the database timeouts; the thread is a daemon either way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.warning("host liveness did not stop within %.0fs (a call to the "
                            "database in progress)", timeout)

    def check_once(self) -> None:
        """One pass: mark the silent hosts down, count the hosts up and down."""
        database = self._database
        database.liveness_call_since = time.monotonic()
        try:
            for name in self._store.mark_silent_hosts_down(self._down_after):
                LOG.warning("host %s marked down: no heartbeat for %.0fs",
                            name, self._down_after)
            self.host_counts = self._store.count_hosts()
            database.liveness.up()
        except DatabaseUnavailable as exc:
            database.liveness.down(time.monotonic(), str(exc))
            LOG.warning("host liveness check skipped: database unavailable (%s)", exc)
        finally:
            database.liveness_call_since = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.check_once()
                self._stop.wait(max(0.0, started + self.interval - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - said by the health (failing), then ended
            LOG.exception("host liveness stopped: hosts are no longer marked down")
            self._database.liveness_failure = f"{type(exc).__name__}: {exc}"
