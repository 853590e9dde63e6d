"""Sending the webhook's requests: up to N at once, each on a worker thread of its own.

Every job submitted gets exactly one ``Answer`` back through ``results()``: the status
the endpoint gave, or ``status=None`` and what went wrong in words (refused, timed out,
TLS, closed without a response, an unexpected error). The sender never retries a
request the endpoint may have seen an answer for: the service decides the retries. The
one exception is the race every HTTP client with keep-alive has: the endpoint closed an
idle connection just as a request went down it; such a request (no response byte on a
connection that had been reused) is sent once more at once on a fresh connection.

The service's loop waits on ``wakeup`` (or ``fileno()``) together with its AMQP socket:
it is set while answers wait to be taken.
"""

from __future__ import annotations

import dataclasses
import http
import http.client
import importlib.metadata
import logging
import queue
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Optional

from lifecycle_publisher.wakeup import Wakeup
from lifecycle_webhook import signing
from lifecycle_webhook.cloudevents import Request
from lifecycle_webhook.retry_policy import Answer

LOG = logging.getLogger(__name__)

DETAIL_BODY_CHARS = 200  # of the endpoint's answer, in Answer.detail
MAX_RESPONSE_BYTES = 1 << 20  # read to keep the connection; a longer answer closes it

_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


@dataclasses.dataclass
class Job:
    """One request to send. ``token`` is the caller's, handed back with the answer.
    The worker adds the Standard Webhooks headers when it sends (``msg_id`` is the
    ``webhook-id``; the timestamp is the time of sending)."""

    token: object
    request: Request
    msg_id: str


_STOP = object()  # one per worker, queued by close()

# What sending down a kept-alive connection the endpoint has closed raises (plain TCP,
# then TLS), before any byte of an answer
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                      ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _version() -> str:
    try:
        return importlib.metadata.version("libvirt-lifecycle-events")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Sender:
    """POSTs jobs to one URL on ``workers`` daemon threads ("webhook-sender-1" ...).

    Each worker keeps one persistent HTTP/1.1 connection, opened on first use and
    reopened after an error, after the endpoint said ``Connection: close``, or when the
    endpoint closed it while idle. ``timeout`` bounds connecting (TLS handshake
    included) and each wait for the endpoint's bytes: it is a socket timeout, so an
    endpoint that trickles its answer byte by byte can take longer in all.

    ``secrets`` is called for each request (``signing.SecretFile.secrets``, which
    follows a rewritten file); every secret it returns signs.
    """

    def __init__(self, url: str, *, ca_file: Optional[str], timeout: float, workers: int,
                 secrets: Callable[[], tuple[bytes, ...]],
                 user_agent: Optional[str] = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url {url!r}: not an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("webhook url: credentials in the URL are not supported")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._host = parts.hostname
        self._port = parts.port  # (a ValueError if it is not a port number)
        self._host_header = parts.netloc
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            try:
                self._tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {ca_file}: {exc}") from exc
            # create_default_context: CERT_REQUIRED and check_hostname, kept as they are
        self._timeout = timeout
        self._secrets = secrets
        self._user_agent = user_agent or f"lifecycle-webhook/{_version()}"

        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[tuple[Job, Answer]] = []  # under _lock
        self._pending = 0  # submitted, answer not yet produced; under _lock
        # Set after each answer, cleared by results(). The service shares it (its queue
        # and its stop() set it too), so it stays open as long as the sender exists.
        self.wakeup = Wakeup()
        self._closing = False
        self._sockets: dict[int, Optional[socket.socket]] = {}  # worker -> its socket now
        self._pollers: dict[int, tuple] = {}  # worker -> (its socket, a poll object on it)
        self._threads = [threading.Thread(target=self._work, args=(n,), daemon=True,
                                          name=f"webhook-sender-{n}")
                         for n in range(1, workers + 1)]
        for thread in self._threads:
            thread.start()

    # -- the caller's side ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` for the next free worker. Any thread; never blocks. Raises
        RuntimeError after ``close``."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the webhook sender is closed")
            self._pending += 1
        self._jobs.put(job)

    def results(self) -> list[tuple[Job, Answer]]:
        """The jobs answered since the last call, in the order they were answered;
        never waits."""
        self.wakeup.clear()  # before taking: an answer put after this sets it again
        with self._lock:
            done, self._done = self._done, []
        return done

    def fileno(self) -> int:
        """``wakeup``'s: readable while ``results()`` has something."""
        return self.wakeup.fileno()

    def in_flight(self) -> int:
        """Jobs submitted whose answer is not yet produced (queued or being sent).
        Zero means every answer is in ``results()``."""
        with self._lock:
            return self._pending

    def close(self, timeout: float) -> None:
        """Stop the workers, waiting up to ``timeout`` seconds for the requests being
        sent. Jobs still queued are not sent: they are answered "not sent" (status None).
        A request still going after ``timeout`` has its connection shut down (its
        answer says so) and its worker is left to end by itself. ``results()`` still
        hands over what comes after."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [n for n, t in enumerate(self._threads, 1) if t.is_alive()]
        if busy:
            LOG.warning("webhook sender closed with %d request(s) still going after %ss; "
                        "their connections are shut down", len(busy), timeout)
            for n in busy:
                sock = self._sockets.get(n)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # closed meanwhile

    def dead_workers(self) -> list[str]:
        """Names of the workers that ended before ``close`` (none should: a worker
        turns whatever an attempt raises into its answer), for the health check."""
        if self._closing:
            return []
        return [t.name for t in self._threads if not t.is_alive()]

    # -- the workers ------------------------------------------------------------------

    def _work(self, n: int) -> None:
        conn = self._new_connection()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                if self._closing:
                    self._finish(job, Answer(None, None, "not sent: the sender was closed"))
                    continue
                try:
                    answer = self._send(n, conn, job)
                except Exception as exc:  # noqa: BLE001 (a worker must not die)
                    LOG.exception("webhook request %s: unexpected error", job.msg_id)
                    conn.close()
                    answer = Answer(None, None, f"unexpected error: {exc!r}"[:300])
                self._sockets[n] = None
                self._finish(job, answer)
        finally:
            conn.close()

    def _finish(self, job: Job, answer: Answer) -> None:
        with self._lock:
            self._done.append((job, answer))
            self._pending -= 1
        self.wakeup.set()

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port,
                                               timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _send(self, n: int, conn: http.client.HTTPConnection, job: Job) -> Answer:
        """One attempt (two when a reused connection turned out closed). ``conn`` is
        left open only when the endpoint's answer was read whole and it keeps the
        connection alive."""
        body = job.request.body
        headers = dict(job.request.headers)
        headers.update(signing.headers(self._secrets(), job.msg_id, int(time.time()), body))
        headers.update({"Host": self._host_header, "User-Agent": self._user_agent,
                        "Content-Length": str(len(body))})
        while True:
            if conn.sock is not None and self._closed_by_peer(n, conn.sock):
                conn.close()  # the endpoint closed it while idle (or sent what it should not)
            reused = conn.sock is not None
            if not reused:
                try:
                    conn.connect()
                except Exception as exc:  # noqa: BLE001 (each kind said in words)
                    conn.close()
                    return Answer(None, None, self._failure(exc, connecting=True))
            self._sockets[n] = conn.sock
            try:
                conn.request("POST", self._target, body=body, headers=headers)
                response = conn.getresponse()
            except _CLOSED_WHILE_IDLE as exc:
                conn.close()
                if reused and not self._closing:  # (closing: shut down by close())
                    LOG.debug("webhook request %s: kept-alive connection was closed (%s); "
                              "sending again on a fresh one", job.msg_id, exc)
                    continue
                return Answer(None, None, self._failure(exc, connecting=False))
            except Exception as exc:  # noqa: BLE001
                conn.close()
                return Answer(None, None, self._failure(exc, connecting=False))
            return self._read_answer(conn, response)

    def _read_answer(self, conn: http.client.HTTPConnection,
                     response: http.client.HTTPResponse) -> Answer:
        status, reason = response.status, response.reason
        retry_after = response.getheader("Retry-After")
        try:
            data = response.read(MAX_RESPONSE_BYTES)
        except Exception as exc:  # noqa: BLE001 (the status counts; the body is a detail)
            conn.close()
            data = f"(answer's body not read: {self._failure(exc, connecting=False)})".encode()
        if not response.isclosed():
            conn.close()  # a longer answer than read: the connection cannot be reused
            response.close()
        # (a "Connection: close" answer has already closed conn: http.client's doing)
        return Answer(status, retry_after, _detail(status, reason, data))

    def _closed_by_peer(self, n: int, sock: socket.socket) -> bool:
        """Whether worker ``n``'s idle connection has something to read: the endpoint's
        EOF (or reset), since between requests it has nothing else to say. (One poll
        object per worker and socket: making one per request cost 6% of the CPU.)"""
        watched = self._pollers.get(n)
        if watched is None or watched[0] is not sock:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            watched = self._pollers[n] = (sock, poller)
        return bool(watched[1].poll(0))

    def _failure(self, exc: BaseException, *, connecting: bool) -> str:
        where = f"{self._host}:{self._port or (443 if self._tls else 80)}"
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
            doing = f"connecting to {where}" if connecting else "waiting for the answer"
            return f"timed out after {self._timeout}s {doing}"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS: {exc.reason or exc}"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self._host}: {exc.strerror}"
        if isinstance(exc, http.client.RemoteDisconnected):
            return "connection closed by the endpoint without an answer"
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return f"connection reset by the endpoint ({exc.strerror or exc})"
        if isinstance(exc, http.client.HTTPException):
            return f"not an HTTP answer: {type(exc).__name__}: {exc}"[:300]
        if isinstance(exc, OSError):
            return f"connection to {where} failed: {exc.strerror or exc}"
        return f"{type(exc).__name__}: {exc}"[:300]


def _detail(status: int, reason: str, data: bytes) -> str:
    """ "503 Service Unavailable: <the body's first 200 chars>", on one line."""
    if not reason:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    head = f"{status} {reason}".rstrip()
    text = _UNPRINTABLE.sub(" ", data.decode("utf-8", errors="replace")).strip()
    return f"{head}: {text[:DETAIL_BODY_CHARS]}" if text else head
