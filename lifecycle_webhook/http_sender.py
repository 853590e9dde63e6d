"""Sending the webhook's requests: up to N at once, all on ONE I/O thread.

Every job submitted gets exactly one ``Answer`` back through ``results()``: the status
the endpoint gave, or ``status=None`` and what went wrong in words. The sender never
retries a request the endpoint may have answered; the one exception is a request that
went down a kept-alive connection the endpoint had closed while it was idle (no byte of
an answer came back): it is sent once more at once on a fresh connection.

How: one thread ("webhook-sender") runs a ``selectors`` loop over up to ``workers``
persistent non-blocking connections, with a minimal HTTP/1.1 client: each request is
written as one pre-built ``bytes``, each answer is parsed by ``ResponseParser`` (pure:
it is fed bytes and says when the answer is whole). Jobs come in through a queue and a
wake-up pipe the loop selects on; answers go out in batches, ``wakeup`` set once per
batch. Why: with a thread per request, the handing off between 17 threads (queues, the
GIL, the wake-up pipe) and ``http.client``'s header handling cost most of the CPU.
Measured (``python -m benchmarks --only webhook``, 2 cores, a receiver answering 204 at
once, runs alternated threads/loop twice): max_in_flight 16: 3,720 and 2,526 events/s
at 244 and 392 us of CPU an event with threads; 7,796 and 6,490 events/s at 95 and
120 us with this loop; max_in_flight 64: 3,753 and 3,418 (232, 272 us) against 6,541
and 7,571 (103, 95 us).

DNS: an IP literal or ``localhost`` is resolved once, at construction. Another name is
resolved on a helper thread ("webhook-resolver"), never on the loop, when a new
connection needs it and the last resolution is older than ``RESOLVE_TTL`` seconds;
connections waiting for it count it against their connect ``timeout``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import errno
import http.client
import importlib.metadata
import ipaddress
import logging
import os
import queue
import select
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Optional

from lifecycle_common.wakeup import Wakeup
from lifecycle_webhook import signing
from lifecycle_webhook.cloudevents import Request
from lifecycle_webhook.http_response import (ResponseParser, answer_detail,
                                             describe_failure)
from lifecycle_webhook.retry_policy import Answer

LOG = logging.getLogger(__name__)

__all__ = ["Job", "Sender"]

RESOLVE_TTL = 30.0    # seconds a name's addresses are used for new connections
_RECV = 256 * 1024
NOT_SENT = "not sent: the sender was closed"
CUT = "cut short: the sender was closed before the answer came"

# What a request down a kept-alive connection the endpoint closed meets (before any
# byte of an answer): then it is sent again on a fresh connection
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                      ssl.SSLEOFError, ssl.SSLZeroReturnError)
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)
_OWN_HEADERS = frozenset({"host", "user-agent", "content-length", "transfer-encoding",
                          "connection", signing.ID_HEADER, signing.TIMESTAMP_HEADER,
                          signing.SIGNATURE_HEADER})


@dataclasses.dataclass
class Job:
    """One request to send. ``token`` is the caller's, handed back with the answer.
    The worker adds the Standard Webhooks headers when it sends (``msg_id`` is the
    ``webhook-id``; the timestamp is the time of sending)."""

    token: object
    request: Request
    msg_id: str


def _version() -> str:
    try:
        return importlib.metadata.version("libvirt-lifecycle-events")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- the connections ---------------------------------------------------------------------

class _State(enum.Enum):
    RESOLVING = "waiting for the name's addresses"
    CONNECTING = "connecting"
    HANDSHAKE = "TLS handshake"
    WRITING = "writing the request"
    READING = "reading the answer"
    IDLE = "kept alive, idle"
    CLOSED = "closed"


_RESOLVING, _CONNECTING, _HANDSHAKE, _WRITING, _READING, _IDLE, _CLOSED = _State
_CONNECTING_STATES = (_RESOLVING, _CONNECTING, _HANDSHAKE)


class _Connection:
    __slots__ = ("sock", "state", "events", "deadline", "job", "reused", "out", "parser",
                 "answered", "addresses")

    def __init__(self) -> None:
        self.sock = None
        self.state = _RESOLVING
        self.events = 0          # what the selector watches on sock (0: not registered)
        self.deadline: Optional[float] = None
        self.job: Optional[Job] = None
        self.reused = False      # the job went down a connection that answered before
        self.out: Optional[memoryview] = None
        self.parser: Optional[ResponseParser] = None
        self.answered = 0
        self.addresses: list = []


class Sender:
    """POSTs jobs to one URL, up to ``workers`` at once, from one I/O thread.

    Each connection is persistent (HTTP/1.1 keep-alive), opened when a job finds none
    idle and fewer than ``workers`` open, and dropped after an error, after the
    endpoint said ``Connection: close``, or when the endpoint closed it while idle.
    ``timeout`` bounds connecting (name resolution and TLS handshake included) and each
    wait for the endpoint's bytes (renewed by each byte that comes), so an endpoint that
    trickles its answer can take longer in all. ``secrets`` is called for each request
    as it is written (on the I/O thread); every secret it returns signs.
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
        self._tls: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            try:
                self._tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {ca_file}: {exc}") from exc
            # create_default_context: CERT_REQUIRED and check_hostname, kept as they are
        self._port = parts.port or (443 if self._tls else 80)  # (a ValueError if not a port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c <= " " or c == "\x7f" for c in target):
            raise ValueError(f"webhook url {url!r}: a space or control character in its path")
        agent = user_agent or f"lifecycle-webhook/{_version()}"
        head = f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {agent}\r\n"
        _check_header_text(head, 3)
        self._head = head.encode("latin-1")
        self._timeout = timeout
        self._secrets = secrets
        self._workers = workers
        self._fixed_addresses = self._resolve_now_if_local()
        self._addresses: Optional[list] = None  # of a name; resolved at _resolved_at
        self._resolved_at = 0.0
        self._resolution: Optional[concurrent.futures.Future] = None
        self._resolver: Optional[concurrent.futures.ThreadPoolExecutor] = None

        self._lock = threading.Lock()
        self._done: list[tuple[Job, Answer]] = []  # under _lock
        self._pending = 0  # submitted, answer not yet produced; under _lock
        self._closing = False  # under _lock when set
        self._cut = False      # close() waited long enough: cut what is still going
        # Set after each batch of answers, cleared by results(). The service shares it,
        # so it stays open as long as the sender exists.
        self.wakeup = Wakeup()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox = Wakeup()  # the loop's: jobs came, a resolution ended, close()

        # the I/O thread's own, from here on
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._inbox.fileno(), selectors.EVENT_READ, None)
        self._connections: set[_Connection] = set()
        self._idle: list[_Connection] = []
        self._waiting_for_addresses: list[_Connection] = []
        self._backlog: collections.deque = collections.deque()  # (job, on a fresh connection)
        self._answers: list[tuple[Job, Answer]] = []  # not yet handed over
        self._thread = threading.Thread(target=self._run, daemon=True, name="webhook-sender")
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` for the I/O thread. Any thread; never blocks. Raises
        RuntimeError after ``close``."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the webhook sender is closed")
            if not self._thread.is_alive():  # ended of a bug (the health says failing)
                self._done.append((job, Answer(None, None, "not sent: the webhook "
                                               "sender's thread ended")))
                self.wakeup.set()
                return
            self._pending += 1
            self._jobs.put(job)  # (under the lock: close() sees every job queued)
        self._inbox.set()

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
        """Stop, waiting up to ``timeout`` seconds for the requests being sent. Jobs
        still queued are not sent: they are answered "not sent" (status None). A request
        still going after ``timeout`` has its connection closed (its answer says so).
        ``results()`` still hands over what comes after."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._inbox.set()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            self._cut = True
            self._inbox.set()
            self._thread.join(1.0)
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)
        elif not self._thread.is_alive():
            self._inbox.close()  # (nothing writes to it any more: submit() refuses)

    def dead_workers(self) -> list[str]:
        """["webhook-sender"] if the I/O thread ended before ``close`` (it should not:
        it turns whatever one request raises into that request's answer), for the
        health check."""
        if self._closing or self._thread.is_alive():
            return []
        return [self._thread.name]

    # -- the I/O thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            LOG.exception("webhook sender: the I/O thread ended unexpectedly")
            raise
        finally:
            self._shut_down()

    def _loop(self) -> None:
        select = self._selector.select
        while True:
            for key, mask in select(self._wait()):
                conn = key.data
                if conn is None:
                    self._inbox.clear()  # (before taking what it announced)
                elif conn.state != _CLOSED:
                    self._on_event(conn, mask)
            self._take_jobs()
            if self._resolution is not None and self._resolution.done():
                self._addresses_came()
            now = time.monotonic()
            for conn in [c for c in self._connections
                         if c.deadline is not None and c.deadline <= now]:
                self._failed(conn, TimeoutError())
            if self._closing:
                self._refuse_backlog()
                if self._cut:
                    self._cut_short()
            else:
                self._dispatch()
            self._hand_over()
            if self._closing and not any(c.job for c in self._connections):
                return

    def _wait(self) -> Optional[float]:
        """Seconds to the nearest deadline (None: none)."""
        nearest = None
        for conn in self._connections:
            deadline = conn.deadline
            if deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        return None if nearest is None else max(0.0, nearest - time.monotonic())

    def _take_jobs(self) -> None:
        get = self._jobs.get_nowait
        closing = self._closing  # (read before taking: close() set it after the last put)
        try:
            while True:
                job = get()
                if closing:
                    self._answers.append((job, Answer(None, None, NOT_SENT)))
                else:
                    self._backlog.append((job, False))
        except queue.Empty:
            pass

    def _refuse_backlog(self) -> None:
        while self._backlog:
            job, _ = self._backlog.popleft()
            self._answers.append((job, Answer(None, None, NOT_SENT)))

    def _dispatch(self) -> None:
        """Jobs waiting to connections: an idle one (the last used first), else a new
        one while fewer than ``workers`` are open. A job sent again after its kept-alive
        connection was closed goes on a new one."""
        backlog, idle = self._backlog, self._idle
        while backlog:
            job, fresh = backlog[0]
            while idle and not fresh and not self._still_open(idle[-1]):
                self._drop(idle[-1])  # it ended (or said what it should not) while idle
            if idle and not fresh:
                conn = idle.pop()
            elif len(self._connections) < self._workers:
                conn = None
            elif fresh and idle:
                self._drop(idle[0])
                conn = None
            else:
                return
            backlog.popleft()
            if conn is None:
                conn = _Connection()
                self._connections.add(conn)
            conn.job = job
            conn.reused = conn.answered > 0
            try:
                if conn.state == _IDLE:
                    self._write_request(conn)
                else:
                    self._open(conn)
            except (OSError, http.client.HTTPException) as exc:
                self._failed(conn, exc)
            except Exception as exc:  # noqa: BLE001 (the loop must not die of one request)
                self._unexpected(conn, exc)

    def _hand_over(self) -> None:
        """The answers of this turn to ``results()``, with one wake-up."""
        if self._answers:
            answers, self._answers = self._answers, []
            with self._lock:
                self._done.extend(answers)
                self._pending -= len(answers)
            self.wakeup.set()

    def _shut_down(self) -> None:
        """The loop ended (closed, or of a bug): every job not answered is answered."""
        why = NOT_SENT if self._closing else "unexpected error: the webhook sender's thread ended"
        for conn in list(self._connections):
            if conn.job is not None:
                self._answers.append((conn.job, Answer(None, None,
                                                       CUT if self._closing else why)))
                conn.job = None
            self._drop(conn)
        self._backlog.extendleft(reversed([(j, False) for j in _drain(self._jobs)]))
        while self._backlog:
            job, _ = self._backlog.popleft()
            self._answers.append((job, Answer(None, None, why)))
        self._hand_over()
        self._selector.close()

    def _cut_short(self) -> None:
        going = [c for c in self._connections if c.job is not None]
        if going:
            LOG.warning("webhook sender closed with %d request(s) still going; their "
                        "connections are closed", len(going))
        for conn in going:
            job, conn.job = conn.job, None
            self._drop(conn)
            self._answers.append((job, Answer(None, None, CUT)))

    # -- one connection's steps -------------------------------------------------------

    def _on_event(self, conn: _Connection, mask: int = selectors.EVENT_READ) -> None:
        try:
            state = conn.state
            if state == _READING:
                self._read(conn)
            elif state == _WRITING:
                if mask & selectors.EVENT_READ and not isinstance(conn.sock, ssl.SSLSocket):
                    self._read_early(conn)  # the endpoint answers before it read it all
                else:
                    self._write(conn)
            elif state == _IDLE:
                self._idle_readable(conn)
            elif state == _CONNECTING:
                self._connected(conn)
            elif state == _HANDSHAKE:
                self._handshake(conn)
        except (OSError, http.client.HTTPException) as exc:
            self._failed(conn, exc)
        except Exception as exc:  # noqa: BLE001 (the loop must not die of one request)
            self._unexpected(conn, exc)

    def _still_open(self, conn: _Connection) -> bool:
        """Whether an idle connection may carry a request: nothing arrived on it since
        its last answer (its end, or bytes it should not have sent), which the selector
        may not have reported yet in this turn of the loop."""
        sock = conn.sock
        try:
            if self._tls is None:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                return False  # its end (b""), or bytes beyond its last answer
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0) and not sock.pending():
                return True
            sock.recv(_RECV)
            return False
        except (BlockingIOError, ssl.SSLWantReadError):
            return True  # nothing (or a TLS record without data: a session ticket)
        except OSError:
            return False

    def _idle_readable(self, conn: _Connection) -> None:
        """Between requests the endpoint has nothing to say: what it says is its end
        (or a reset), and the connection is dropped. (With TLS, a record that carries
        no data, a TLS 1.3 session ticket say, is not: the connection stays.)"""
        if self._tls is not None:
            try:
                if conn.sock.recv(_RECV):
                    self._drop(conn)  # (bytes beyond an answer: not a clean connection)
                    return
            except ssl.SSLWantReadError:
                return
            except OSError:
                pass
        self._drop(conn)

    def _open(self, conn: _Connection) -> None:
        conn.deadline = time.monotonic() + self._timeout
        addresses = self._fixed_addresses or self._fresh_addresses()
        if addresses is None:
            conn.state = _RESOLVING
            self._waiting_for_addresses.append(conn)
            return
        conn.addresses = list(addresses)
        self._connect(conn)

    def _connect(self, conn: _Connection) -> None:
        """To the next address; on to the one after when it is refused at once."""
        conn.state = _CONNECTING
        while True:
            family, kind, proto, _, address = conn.addresses.pop(0)
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err in _IN_PROGRESS:
                self._watch(conn, sock, selectors.EVENT_WRITE)
                return
            sock.close()
            if not conn.addresses:
                raise OSError(err, os.strerror(err))

    def _connected(self, conn: _Connection) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._unwatch(conn)
            conn.sock.close()
            conn.sock = None
            if conn.addresses:
                self._connect(conn)
                return
            raise OSError(err, os.strerror(err))
        if self._tls is None:
            self._write_request(conn)
            return
        sock = conn.sock
        self._unwatch(conn)  # (wrapping takes over its descriptor)
        tls = self._tls.wrap_socket(sock, server_hostname=self._host,
                                    do_handshake_on_connect=False)
        conn.state = _HANDSHAKE
        self._watch(conn, tls, selectors.EVENT_READ)
        self._handshake(conn)

    def _handshake(self, conn: _Connection) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        self._write_request(conn)

    def _write_request(self, conn: _Connection) -> None:
        conn.out = memoryview(self._request_bytes(conn.job))
        conn.parser = ResponseParser()
        conn.state = _WRITING
        conn.deadline = time.monotonic() + self._timeout  # (a full send buffer, say)
        self._write(conn)

    def _request_bytes(self, job: Job) -> bytes:
        """The whole request, signed now."""
        request = job.request
        body = request.body
        lines = [f"{name}: {value}\r\n" for name, value in request.headers.items()
                 if name.lower() not in _OWN_HEADERS]
        lines.extend(f"{name}: {value}\r\n" for name, value in signing.headers(
            self._secrets(), job.msg_id, int(time.time()), body).items())
        lines.append(f"Content-Length: {len(body)}\r\n")
        headers = "".join(lines)
        _check_header_text(headers, len(lines))
        return b"".join((self._head, headers.encode("latin-1"), b"\r\n", body))

    def _write(self, conn: _Connection) -> None:
        # While writing, a plain connection is also watched for reading: an endpoint may
        # answer (413, say) before it read the whole request, and stop reading.
        writing = selectors.EVENT_WRITE if self._tls is not None \
            else selectors.EVENT_WRITE | selectors.EVENT_READ
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._want(conn, writing)
            return
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except (BrokenPipeError, ConnectionResetError):
            if self._tls is None and self._answered_early(conn):
                return
            raise
        conn.deadline = time.monotonic() + self._timeout
        if sent < len(conn.out):
            conn.out = conn.out[sent:]
            self._want(conn, writing)
            return
        conn.out = None
        conn.state = _READING
        self._want(conn, selectors.EVENT_READ)

    def _read_early(self, conn: _Connection) -> None:
        """An answer while the request is still being written: read it; once its head is
        in, nothing more is written (the endpoint will not read it), and the connection
        is not kept."""
        conn.out = None
        conn.state = _READING
        conn.parser.reusable = False
        self._read(conn)

    def _answered_early(self, conn: _Connection) -> bool:
        """The endpoint closed (or reset) the connection while the request was being
        written: what it answered before is still to be read. Whether there was an
        answer, now settled."""
        data = b""
        try:
            while chunk := conn.sock.recv(_RECV):
                data += chunk
        except OSError:
            pass
        if not data:
            return False
        parser = conn.parser
        try:
            whole = parser.feed(data) or parser.feed_eof()
        except http.client.HTTPException:
            return False
        if not whole:
            return False
        job, conn.job, conn.parser = conn.job, None, None
        self._answers.append((job, Answer(parser.status, parser.retry_after, answer_detail(
            parser.status, parser.reason, parser.body))))
        self._drop(conn)
        return True

    def _read(self, conn: _Connection) -> None:
        sock = conn.sock
        try:
            data = sock.recv(_RECV)
            if self._tls is not None and data:
                while sock.pending():  # decrypted already: the selector cannot see it
                    data += sock.recv(_RECV)
        except (BlockingIOError, ssl.SSLWantReadError):
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        conn.deadline = time.monotonic() + self._timeout
        parser = conn.parser
        if not (parser.feed(data) if data else parser.feed_eof()):
            return
        job, conn.job, conn.parser = conn.job, None, None
        self._answers.append((job, Answer(parser.status, parser.retry_after, answer_detail(
            parser.status, parser.reason, parser.body))))
        conn.answered += 1
        if parser.reusable:
            conn.state, conn.deadline = _IDLE, None
            self._idle.append(conn)
        else:
            self._drop(conn)

    # -- when it goes wrong -----------------------------------------------------------

    def _failed(self, conn: _Connection, exc: BaseException) -> None:
        """``conn`` met ``exc``: it is dropped; its job is answered, or sent again on a
        fresh connection if a kept-alive connection was closed before any answer."""
        job, parser, state = conn.job, conn.parser, conn.state
        conn.job = None
        self._drop(conn)
        if job is None:
            return
        if (conn.reused and isinstance(exc, _CLOSED_WHILE_IDLE)
                and (parser is None or not parser.started) and not self._closing):
            LOG.debug("webhook request %s: kept-alive connection was closed (%s); sending "
                      "again on a fresh one", job.msg_id, exc)
            self._backlog.appendleft((job, True))
            return
        words = describe_failure(exc, host=self._host, port=self._port,
                                 timeout=self._timeout,
                                 connecting=state in _CONNECTING_STATES)
        if parser is not None and parser.head_done:  # the status counts; the body is a detail
            answer = Answer(parser.status, parser.retry_after, answer_detail(
                parser.status, parser.reason, f"(answer's body not read: {words})".encode()))
        else:
            answer = Answer(None, None, words)
        self._answers.append((job, answer))

    def _unexpected(self, conn: _Connection, exc: Exception) -> None:
        job, conn.job = conn.job, None
        LOG.exception("webhook request %s: unexpected error",
                      job.msg_id if job is not None else "(none)")
        self._drop(conn)
        if job is not None:
            self._answers.append((job, Answer(None, None, f"unexpected error: {exc!r}"[:300])))

    # -- the selector and the connections' sockets ------------------------------------

    def _watch(self, conn: _Connection, sock, events: int) -> None:
        conn.sock, conn.events = sock, events
        self._selector.register(sock, events, conn)

    def _want(self, conn: _Connection, events: int) -> None:
        if conn.events != events:
            self._selector.modify(conn.sock, events, conn)
            conn.events = events

    def _unwatch(self, conn: _Connection) -> None:
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0

    def _drop(self, conn: _Connection) -> None:
        if conn.sock is not None:
            try:
                self._unwatch(conn)
            except (OSError, ValueError, KeyError):
                pass  # (closed meanwhile)
            conn.sock.close()
            conn.sock = None
        conn.state, conn.deadline = _CLOSED, None
        self._connections.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if conn in self._waiting_for_addresses:
            self._waiting_for_addresses.remove(conn)

    # -- addresses --------------------------------------------------------------------

    def _resolve_now_if_local(self) -> Optional[list]:
        """The addresses of an IP literal or ``localhost`` (no DNS asked); None for
        another name."""
        host = self._host
        try:
            ipaddress.ip_address(host)
            flags = socket.AI_NUMERICHOST
        except ValueError:
            if host.lower() != "localhost":
                return None
            flags = 0
        try:
            return socket.getaddrinfo(host, self._port, type=socket.SOCK_STREAM, flags=flags)
        except OSError:
            return None  # (resolved for each connection, then, like another name)

    def _fresh_addresses(self) -> Optional[list]:
        """The name's addresses if resolved less than RESOLVE_TTL ago; else None, and a
        resolution is under way on the resolver's thread."""
        if self._addresses is not None and time.monotonic() - self._resolved_at < RESOLVE_TTL:
            return self._addresses
        if self._resolution is None:
            if self._resolver is None:
                self._resolver = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="webhook-resolver")
            self._resolution = self._resolver.submit(
                socket.getaddrinfo, self._host, self._port, type=socket.SOCK_STREAM)
            self._resolution.add_done_callback(lambda _: self._inbox.set())
        return None

    def _addresses_came(self) -> None:
        resolution, self._resolution = self._resolution, None
        waiting, self._waiting_for_addresses = self._waiting_for_addresses, []
        try:
            addresses = resolution.result()
        except Exception as exc:  # noqa: BLE001 (gaierror, mostly: said in words)
            for conn in waiting:
                self._failed(conn, exc)
            return
        self._addresses, self._resolved_at = addresses, time.monotonic()
        for conn in waiting:
            if conn.state != _RESOLVING:
                continue
            conn.addresses = list(addresses)
            try:
                self._connect(conn)
            except (OSError, http.client.HTTPException) as exc:
                self._failed(conn, exc)


def _check_header_text(text: str, lines: int) -> None:
    """``lines`` header lines, each ending in CRLF: a value with a line break of its
    own would end the head early (and let it say what it should not); refused, as
    http.client refuses it."""
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("invalid header value: a line break in a header")


def _drain(jobs: queue.SimpleQueue) -> list:
    taken = []
    try:
        while True:
            taken.append(jobs.get_nowait())
    except queue.Empty:
        return taken
