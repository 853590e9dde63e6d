"""Webhook receivers for the tests and the demo: real HTTP(S) endpoints that check every
request as a subscriber outside OpenStack would, and answer as a test asks.

Each request is verified with the ``standardwebhooks`` package (the signature; any of
several secrets during a rotation) and parsed with the official ``cloudevents`` SDK
(structured or binary mode), then answered: 401 for a bad signature, 400 for what is
not a CloudEvent 1.0, 2xx otherwise unless a behaviour says else (503 to the first N
requests, 400 to the events a predicate picks, a delay, not listening for a while).
Every answered request is recorded before its answer is written, so that once a sender
has an answer, the record is there to see.

As a script, for the demo::

    python -m lab.webhook_receiver --port P --secret-file F [--certfile C --keyfile K]

prints one line per request (time, type, subject, sequence, signature, answer) until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional, Union

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from lab import waiting

LOG = logging.getLogger(__name__)

STRUCTURED = "structured"
BINARY = "binary"
TYPE_PREFIX = "io.libvirt-lifecycle."
MAX_BODY = 10 * 1024 * 1024

Secret = Union[str, bytes]
Secrets = Union[Secret, Iterable[Secret], Callable[[], Iterable[Secret]]]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw and answered it. The event's fields are None when
    the body could not be parsed as a CloudEvent (``error`` then says why). ``at`` is
    when the request arrived (``time.monotonic()``), ``answered_at`` when its answer
    was decided, just before it was written."""

    id: Optional[str]
    type: Optional[str]
    source: Optional[str]
    subject: Optional[str]
    sequence: Optional[str]
    partitionkey: Optional[str]
    time: Optional[dt.datetime]
    data: Any
    mode: Optional[str]                 # STRUCTURED, BINARY or None (not a CloudEvent)
    status: Optional[int]               # the answer; None only while it is being decided
    signature_ok: bool
    error: str                          # "" when accepted; else why not, in words
    at: float
    headers: dict[str, str]             # as received, names lower-cased
    answered_at: Optional[float] = None
    path: str = ""
    body: bytes = b""
    attributes: dict[str, Any] = field(default_factory=dict)   # every CloudEvent attribute
    arrival: int = 0                    # 1, 2, ... in order of arrival

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def webhook_id(self) -> Optional[str]:
        return self.headers.get("webhook-id")


@dataclass(frozen=True)
class _Refusal:
    predicate: Callable[[Received], bool]
    status: int
    body: str


@dataclass(frozen=True)
class _Delay:
    seconds: float
    when: Optional[Callable[[Received], bool]]


class SecretFileError(ValueError):
    """The secret file is unreadable or holds a line that is not ``whsec_<base64>``."""


def parse_secret_text(text: str) -> list[str]:
    """The ``whsec_...`` secrets of a secret file's text: one per non-empty line, '#'
    starts a comment. At least one; a line that is not a usable secret raises
    SecretFileError naming its number (never its content)."""
    secrets = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not line.startswith("whsec_"):
            raise SecretFileError(f"line {number}: not a whsec_ secret")
        try:
            Webhook(line)
        except Exception as exc:  # noqa: BLE001 - binascii.Error, empty secret ...
            raise SecretFileError(f"line {number}: not base64 after whsec_ "
                                  f"({type(exc).__name__})") from None
        secrets.append(line)
    if not secrets:
        raise SecretFileError("no secret in the file")
    return secrets


def write_secret_file(path: Union[str, os.PathLike[str]], *secrets: str) -> str:
    """Write ``secrets`` (``whsec_...``), one a line, to a file only its owner reads (as
    ``[webhook] secret_file`` and this receiver's ``--secret-file`` want it); its path."""
    path = os.fspath(path)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("".join(f"{s}\n" for s in secrets))
    return path


class SecretFile:
    """A secret file read again whenever it changed (size, mtime or inode), so that a
    rotation made by rewriting it is seen at the next request. A new content that is
    invalid is reported once and the last good secrets are kept."""

    def __init__(self, path: Union[str, os.PathLike[str]]):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._stat: Optional[tuple] = None
        self._secrets = self._read()

    def _read(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                stat = os.fstat(handle.fileno())
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretFileError(f"{self.path}: {exc}") from None
        self._stat = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        try:
            return parse_secret_text(text)
        except SecretFileError as exc:
            raise SecretFileError(f"{self.path}: {exc}") from None

    def __call__(self) -> list[str]:
        with self._lock:
            try:
                stat = os.stat(self.path)
            except OSError:
                return self._secrets
            if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._stat:
                try:
                    self._secrets = self._read()
                except SecretFileError as exc:
                    LOG.error("keeping the previous secrets: %s", exc)
            return self._secrets


def _webhooks(secrets: Iterable[Secret]) -> list[Webhook]:
    return [Webhook(secret) for secret in secrets]


class Receiver:
    """A webhook endpoint on ``host`` (127.0.0.1) and ``port`` (0: any free one). The
    port is bound at construction and kept through downs and restarts: between
    construction and ``start()``, and while down, connections to it are refused (bound,
    not listening, so nobody else can take it); ``stop()`` releases it.

    ``secrets``: a ``whsec_...`` string (or raw bytes), several of them (a rotation: a
    signature by any one is good), or a callable returning them, asked at each request.
    ``path``: when given (query included), requests to another target get 404.
    ``certfile``/``keyfile`` or ``ssl_context``: HTTPS; ``url`` then names ``localhost``
    (the lab's server certificate has no IP SAN). HTTP/1.1 with keep-alive; idle
    connections are closed after ``idle_timeout`` seconds.

    Behaviours (each also a method, to change them while it runs) compose in this order:
    a delay (before anything is decided), the path, ``fail_first``, the signature (401),
    the CloudEvent (400), the refusals (first match), then ``accept_status``."""

    def __init__(self, secrets: Secrets, *, port: int = 0, host: str = "127.0.0.1",
                 path: Optional[str] = None, certfile: Optional[str] = None,
                 keyfile: Optional[str] = None, ssl_context: Optional[ssl.SSLContext] = None,
                 fail_first: int = 0, fail_status: int = 503,
                 retry_after: Union[str, float, None] = None, delay: float = 0.0,
                 accept_status: int = 200, idle_timeout: float = 30.0,
                 url_host: Optional[str] = None,
                 on_request: Optional[Callable[[Received], None]] = None):
        if callable(secrets):
            self._secrets: Callable[[], Iterable[Secret]] = secrets
        else:
            fixed = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
            _webhooks(fixed)  # a bad secret fails here, not at the first request
            self._secrets = lambda: fixed
        if ssl_context is None and certfile is not None:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(certfile, keyfile)
        self.ssl_context = ssl_context
        self.host = host
        self.path = path
        self.idle_timeout = idle_timeout
        self.url_host = url_host or ("localhost" if ssl_context is not None else host)
        self.on_request = on_request
        self.tls_errors: list[str] = []

        self._lock = threading.Lock()            # records and behaviours
        self._records: list[Received] = []
        self._arrivals = 0
        self._pending = 0
        self._fail_remaining = fail_first
        self._fail_status = fail_status
        self._retry_after = None if retry_after is None else str(retry_after)
        self._refusals: list[_Refusal] = []
        self._delays: list[_Delay] = [_Delay(delay, None)] if delay > 0 else []
        self._accept_status = accept_status
        self._close_connections = False
        self._sleepers: set[threading.Event] = set()

        self._state_lock = threading.RLock()     # up, down, stopped
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._reserved: Optional[socket.socket] = None   # bound, not listening
        self._comeback: Optional[threading.Event] = None  # set to cancel a pending up
        self._port = port
        self._reserved = self._bind()

    # -- life ------------------------------------------------------------------------

    @classmethod
    def start_later(cls, secrets: Secrets, after: float, **kwargs: Any) -> "Receiver":
        """A receiver whose port is taken now but refuses connections for ``after``
        seconds, then comes up on it."""
        receiver = cls(secrets, **kwargs)
        receiver.down_until(time.monotonic() + after)
        return receiver

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.url_host}:{self._port}{self.path or '/'}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> "Receiver":
        """Listen (again) on the port and serve; cancels a pending ``down_until``."""
        with self._state_lock:
            self._cancel_comeback()
            if self._server is None:
                if self._reserved is None:
                    self._reserved = self._bind()
                self._up()
        return self

    def stop(self) -> None:
        """Stop serving, cut every connection, release the port. Idempotent; a request
        waiting in a delay is dropped unanswered."""
        with self._state_lock:
            self._cancel_comeback()
            self._down()
            if self._reserved is not None:
                self._reserved.close()
                self._reserved = None

    def go_down(self, until: Optional[float] = None) -> None:
        """Stop listening now: open connections are cut, new ones refused (the port
        stays bound, so that nobody else takes it). Up again at monotonic time ``until``
        if given, else at ``start()``."""
        with self._state_lock:
            self._cancel_comeback()
            self._down()
            if self._reserved is None:
                self._reserved = self._bind()
            if until is not None:
                cancel = threading.Event()
                self._comeback = cancel
                threading.Thread(target=self._come_back, args=(until, cancel), daemon=True,
                                 name=f"webhook-receiver-{self._port}-comeback").start()

    def down_until(self, monotonic_time: float) -> None:
        self.go_down(until=monotonic_time)

    def down_for(self, seconds: float) -> None:
        self.go_down(until=time.monotonic() + seconds)

    def __enter__(self) -> "Receiver":
        with self._state_lock:
            if self._server is None and self._comeback is None:
                self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def _up(self) -> None:
        sock, self._reserved = self._reserved, None
        self._server = _Server(self, sock)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"webhook-receiver-{self._port}")
        self._thread.start()

    def _down(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.closing.set()
        self._wake_sleepers()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _cancel_comeback(self) -> None:
        if self._comeback is not None:
            self._comeback.set()
            self._comeback = None

    def _come_back(self, until: float, cancel: threading.Event) -> None:
        while (remaining := until - time.monotonic()) > 0:
            if cancel.wait(remaining):
                return
        with self._state_lock:
            if cancel.is_set() or self._comeback is not cancel:
                return
            self._comeback = None
            try:
                self._up()
            except OSError as exc:
                LOG.error("webhook receiver could not come back on port %s: %s",
                          self._port, exc)

    # -- behaviours ------------------------------------------------------------------

    def fail_first(self, n: int, status: int = 503,
                   retry_after: Union[str, float, None] = None) -> None:
        """Answer ``status`` (with ``Retry-After: retry_after`` if given) to the next
        ``n`` requests, whatever they hold (as a proxy in front of the endpoint would)."""
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status
            self._retry_after = None if retry_after is None else str(retry_after)

    def refuse(self, predicate: Callable[[Received], bool], status: int = 400,
               body: str = "refused by the test receiver") -> None:
        """Answer ``status`` with ``body`` to the verified events for which
        ``predicate(received)`` is true (``received.status`` is still None then). Adds to
        the refusals already set; the first that matches answers."""
        with self._lock:
            self._refusals.append(_Refusal(predicate, status, body))

    def delay(self, seconds: float, when: Optional[Callable[[Received], bool]] = None) -> None:
        """Wait ``seconds`` before answering every request (or those for which
        ``when(received)`` is true: a request that could not be parsed has its event
        fields None). A delay for every request replaces the previous one (``delay(0)``
        ends it); those with ``when`` add to the others; matching ones add up."""
        with self._lock:
            if when is None:
                self._delays = [d for d in self._delays if d.when is not None]
            if seconds > 0:
                self._delays.append(_Delay(seconds, when))

    def hold(self, when: Optional[Callable[[Received], bool]] = None) -> None:
        """Keep the requests ``when`` picks (every one if None) unanswered until
        ``release()`` (or the receiver goes down: then they are dropped unanswered)."""
        self.delay(math.inf, when)

    def release(self) -> None:
        """Answer now every request waiting in a delay or a hold (later ones still
        wait: ``reset()`` or ``delay(0)`` ends the behaviour itself)."""
        self._wake_sleepers()

    def accept_with(self, status: int) -> None:
        """The status of an acceptance (200 by default; 202 and 204 are others)."""
        with self._lock:
            self._accept_status = status

    def close_connections(self, close: bool = True) -> None:
        """Answer with ``Connection: close`` (and close), or keep connections alive."""
        with self._lock:
            self._close_connections = close

    def reset(self) -> None:
        """Back to accepting every verified event at once (records are kept)."""
        with self._lock:
            self._fail_remaining = 0
            self._refusals.clear()
            self._delays.clear()
            self._accept_status = 200
            self._close_connections = False

    def set_secrets(self, secrets: Secrets) -> None:
        if callable(secrets):
            self._secrets = secrets
            return
        fixed = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
        _webhooks(fixed)
        self._secrets = lambda: fixed

    # -- what was received -----------------------------------------------------------

    def requests(self) -> list[Received]:
        """Every answered request, in order of arrival."""
        with self._lock:
            return sorted(self._records, key=lambda r: r.arrival)

    def accepted(self) -> list[Received]:
        """The requests answered 2xx, in order of arrival."""
        return [r for r in self.requests() if r.accepted]

    def accepted_ids(self) -> list[str]:
        """The ids of the accepted events, in order of arrival, once per acceptance."""
        return [r.id for r in self.accepted() if r.id is not None]

    def order_by_partition(self) -> dict[str, list[Optional[str]]]:
        """``{partitionkey: [sequence, ...]}`` of the accepted events, in the order they
        were accepted."""
        with self._lock:
            records = sorted((r for r in self._records if r.accepted),
                             key=lambda r: (r.answered_at, r.arrival))
        order: dict[str, list[Optional[str]]] = {}
        for record in records:
            if record.partitionkey is not None:
                order.setdefault(record.partitionkey, []).append(record.sequence)
        return order

    def first_acceptances(self) -> dict[str, list[str]]:
        """``{partitionkey: [id, ...]}``: each event at its first acceptance, in the order
        accepted (delivery is at least once: a copy accepted again later says nothing of
        the order)."""
        with self._lock:
            records = sorted((r for r in self._records if r.accepted),
                             key=lambda r: (r.answered_at, r.arrival))
        seen: set = set()
        order: dict[str, list[str]] = {}
        for record in records:
            if record.id not in seen and record.partitionkey is not None:
                seen.add(record.id)
                order.setdefault(record.partitionkey, []).append(record.id)
        return order

    def partition_overlaps(self) -> list[tuple[Received, Received]]:
        """Pairs of requests of one partition where the second arrived before the first
        was answered: two events of a partition in flight at once, which an in-order
        sender never does. Empty when the sender kept to it."""
        by_key: dict[str, list[Received]] = {}
        for record in self.requests():
            if record.partitionkey is not None:
                by_key.setdefault(record.partitionkey, []).append(record)
        overlaps = []
        for records in by_key.values():
            latest: Optional[Received] = None   # the one answered last so far
            for record in records:              # by arrival
                if latest is not None and record.at < latest.answered_at:
                    overlaps.append((latest, record))
                if latest is None or record.answered_at > latest.answered_at:
                    latest = record
        return overlaps

    def statuses(self) -> collections.Counter:
        """How many requests got each status."""
        with self._lock:
            return collections.Counter(r.status for r in self._records)

    def pending(self) -> int:
        """Requests arrived and not answered yet (reading, verifying or in a delay)."""
        with self._lock:
            return self._pending

    def clear(self) -> None:
        """Forget the records (behaviours are kept)."""
        with self._lock:
            self._records.clear()

    def summary(self) -> str:
        statuses = ", ".join(f"{status}: {count}"
                             for status, count in sorted(self.statuses().items(),
                                                         key=lambda kv: str(kv[0])))
        last = self.requests()[-3:]
        tail = "; ".join(f"{r.id} -> {r.status} {r.error}".rstrip() for r in last)
        return (f"{len(self.accepted())} accepted; statuses {{{statuses}}}; "
                f"{self.pending()} pending; last: {tail or 'none'}")

    def wait_for(self, what: Union[int, Callable[[], Any]], timeout: float = 10.0) -> Any:
        """Wait until ``what`` accepted requests were recorded (an int), or until
        ``what()`` is truthy (a callable), and return the accepted requests or what
        ``what()`` returned. On timeout raise TimeoutError saying what was awaited and
        what the receiver got."""
        if isinstance(what, int):
            count = what

            def enough() -> list[Received]:
                accepted = self.accepted()
                return accepted if len(accepted) >= count else []
            label = f"{count} accepted requests"
            predicate: Callable[[], Any] = enough
        else:
            predicate = what
            label = getattr(what, "__name__", "a condition")
        return waiting.wait_for(predicate, timeout,
                                lambda: f"{label} at {self.url} ({self.summary()})")

    def wait_for_ids(self, ids: Iterable[str], timeout: float = 10.0) -> list[Received]:
        """Wait until every event of ``ids`` was accepted; the accepted requests."""
        wanted = set(ids)

        def all_accepted() -> list[Received]:
            accepted = self.accepted()
            return accepted if wanted <= {r.id for r in accepted} else []

        def missing() -> str:
            absent = sorted(wanted - set(self.accepted_ids()))
            shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
            return (f"{len(wanted)} ids accepted at {self.url}: {len(absent)} missing "
                    f"({shown}) ({self.summary()})")
        return waiting.wait_for(all_accepted, timeout, missing)

    def wait_up(self, timeout: float = 10.0) -> None:
        waiting.wait_for(lambda: self.is_up, timeout, f"the receiver up on {self._port}")

    # -- serving (handler threads) ---------------------------------------------------

    def _serve(self, handler: "_Handler", server: "_Server") -> None:
        arrived = time.monotonic()
        with self._lock:
            self._arrivals += 1
            arrival = self._arrivals
            self._pending += 1
        try:
            self._serve_one(handler, server, arrived, arrival)
        finally:
            with self._lock:
                self._pending -= 1

    def _serve_one(self, handler: "_Handler", server: "_Server", arrived: float,
                   arrival: int) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        base = dict(id=None, type=None, source=None, subject=None, sequence=None,
                    partitionkey=None, time=None, data=None, mode=None, status=None,
                    signature_ok=False, error="", at=arrived, headers=headers,
                    path=handler.path, arrival=arrival)
        body, problem = _read_body(handler, headers)
        if body is None:
            if problem is not None:
                status, text = problem
                self._finish(handler, server, Received(**{**base, "error": text}), status,
                             text, [])
            return
        signature_ok, signature_error = self._verify(body, headers)
        event, parse_error = _parse(headers, body)
        received = Received(**{**base, **event, "signature_ok": signature_ok, "body": body})
        seconds = self._delay_for(received)
        if seconds > 0:
            self._sleep(seconds)
            if server.closing.is_set():
                handler.close_connection = True    # gone down meanwhile: no answer
                return
        status, text, extra = self._decide(received, signature_error, parse_error)
        error = "" if 200 <= status < 300 else text
        self._finish(handler, server, dataclasses.replace(received, error=error),
                     status, text, extra)

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (forever if infinite), or less if released or gone down."""
        wake = threading.Event()
        with self._lock:
            self._sleepers.add(wake)
        try:
            wake.wait(None if math.isinf(seconds) else seconds)
        finally:
            with self._lock:
                self._sleepers.discard(wake)

    def _wake_sleepers(self) -> None:
        with self._lock:
            for wake in self._sleepers:
                wake.set()

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str]:
        errors = []
        for webhook in _webhooks(self._secrets()):
            try:
                webhook.verify(body, headers, json_parse=False)
                return True, ""
            except WebhookVerificationError as exc:
                errors.append(str(exc))
        return False, f"bad signature: {errors[0] if errors else 'no secret'}"

    def _delay_for(self, received: Received) -> float:
        with self._lock:
            delays = list(self._delays)
        return sum(d.seconds for d in delays if d.when is None or d.when(received))

    def _decide(self, received: Received, signature_error: str,
                parse_error: str) -> tuple[int, str, list[tuple[str, str]]]:
        with self._lock:
            if self.path is not None and received.path != self.path:
                return 404, f"no endpoint at {received.path}", []
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                extra = [] if self._retry_after is None else [("Retry-After", self._retry_after)]
                return self._fail_status, "failing on purpose (fail_first)", extra
            refusals = list(self._refusals)
            accept_status = self._accept_status
        if not received.signature_ok:
            return 401, signature_error, []
        if parse_error:
            return 400, parse_error, []
        for refusal in refusals:
            if refusal.predicate(received):
                return refusal.status, refusal.body, []
        return accept_status, "accepted", []

    def _finish(self, handler: "_Handler", server: "_Server", received: Received,
                status: int, text: str, extra: list[tuple[str, str]]) -> None:
        received = dataclasses.replace(received, status=status, answered_at=time.monotonic())
        with self._lock:
            self._records.append(received)
            close = self._close_connections
        if server.closing.is_set():
            handler.close_connection = True
            return
        body = b"" if status == 204 else text.encode("utf-8", "replace") + b"\n"
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            if status != 204:
                handler.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                handler.send_header(name, value)
            if close or handler.close_connection:
                handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(body)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True
        if self.on_request is not None:
            try:
                self.on_request(received)
            except Exception:  # noqa: BLE001 - a printer's failure must not end serving
                LOG.exception("on_request failed")


def _read_body(handler: "_Handler",
               headers: dict[str, str]) -> tuple[Optional[bytes], Optional[tuple[int, str]]]:
    """The body, or (None, (status, why)) to answer, or (None, None) if the client went."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        handler.close_connection = True
        return None, (411, "chunked bodies are not taken: send a Content-Length")
    length = headers.get("content-length")
    if length is None:
        handler.close_connection = True
        return None, (411, "Content-Length required")
    try:
        size = int(length)
    except ValueError:
        handler.close_connection = True
        return None, (400, f"bad Content-Length {length!r}")
    if size < 0 or size > MAX_BODY:
        handler.close_connection = True
        return None, (413, f"body of {size} bytes refused (at most {MAX_BODY})")
    try:
        body = handler.rfile.read(size)
    except OSError:
        body = b""
    if len(body) < size:
        handler.close_connection = True
        return None, None
    return body, None


def _parse(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], str]:
    """The event's fields for a Received, and "" or why it is not a CloudEvent 1.0."""
    binary = any(name.startswith("ce-") for name in headers)
    mode = BINARY if binary else STRUCTURED
    if not binary:
        content_type = headers.get("content-type", "")
        if not content_type.lower().startswith("application/cloudevents+json"):
            return {}, (f"not a CloudEvent: no ce- headers and Content-Type "
                        f"{content_type!r}, not application/cloudevents+json")
    try:
        sent = _attribute_names(headers, body, binary)
        event = from_http_event(HTTPMessage(headers=headers, body=body))
    except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds; all mean 400
        return {"mode": mode}, f"not a CloudEvent ({mode}): {type(exc).__name__}: {exc}"
    # The SDK fills in a missing specversion, id (a new UUID) and time (now): a
    # subscriber relying on them would be misled, so what was not sent is an error.
    missing = [name for name in ("specversion", "id", "source", "type") if name not in sent]
    if missing:
        return {"mode": mode}, (f"not a CloudEvent ({mode}): required attribute(s) "
                                f"{', '.join(missing)} missing")
    attributes = {name: value for name, value in event.get_attributes().items()
                  if name in sent}
    fields = {"id": event.get_id(), "type": event.get_type(), "source": event.get_source(),
              "subject": event.get_subject(), "sequence": event.get_extension("sequence"),
              "partitionkey": event.get_extension("partitionkey"),
              "time": event.get_time() if "time" in sent else None,
              "data": event.get_data(), "mode": mode,
              "attributes": attributes}
    if event.get_specversion() != "1.0":
        return fields, f"CloudEvents specversion {event.get_specversion()!r}, not 1.0"
    return fields, ""


def _attribute_names(headers: dict[str, str], body: bytes, binary: bool) -> set[str]:
    """The names of the attributes the request carries, as sent."""
    if binary:
        names = {name[len("ce-"):] for name in headers if name.startswith("ce-")}
        return names | ({"datacontenttype"} if "content-type" in headers else set())
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"a JSON {type(document).__name__}, not an object")
    return set(document) - {"data", "data_base64"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-webhook-receiver/1"
    disable_nagle_algorithm = True
    server: "_Server"

    def setup(self) -> None:
        self.timeout = self.server.receiver.idle_timeout
        super().setup()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.receiver._serve(self, self.server)

    def _not_allowed(self) -> None:
        body = b"only POST\n"
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.debug("webhook receiver %s: " + format, self.server.server_address[1], *args)


class _Server(ThreadingHTTPServer):
    """One listening period of a Receiver: ends with the listening socket closed and
    every connection it accepted cut."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, receiver: Receiver, sock: socket.socket):
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.server_name, self.server_port = self.server_address
        self.receiver = receiver
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        try:
            self.server_activate()
        except OSError:
            sock.close()
            raise

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        conn = request
        context = self.receiver.ssl_context
        if context is not None:
            try:
                request.settimeout(self.receiver.idle_timeout)
                conn = context.wrap_socket(request, server_side=True)
            except OSError as exc:   # ssl.SSLError included
                with self.receiver._lock:
                    self.receiver.tls_errors.append(f"{type(exc).__name__}: {exc}")
                return
        with self._connections_lock:
            if self.closing.is_set():
                conn.close()
                return
            self._connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(conn)
            if conn is not request:
                conn.close()

    def cut_connections(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                # the plain socket's shutdown, also under TLS: the handler thread still
                # owns the SSL object, this only ends the TCP connection under it
                socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.debug("webhook receiver: connection from %s ended with an error",
                  client_address, exc_info=True)


# -- the demo's script ---------------------------------------------------------------

def describe(received: Received) -> str:
    """One line about a request for the demo: time, type, subject, sequence, signature,
    answer."""
    now = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    kind = received.type or "(not a CloudEvent)"
    if kind.startswith(TYPE_PREFIX):
        kind = kind[len(TYPE_PREFIX):]
    sequence = received.sequence or "-"
    parts = sequence.split("-")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        sequence = f"{int(parts[0])}-{int(parts[1])}"
    signature = "sig ok " if received.signature_ok else "sig BAD"
    line = (f"{now} {kind:<28} {received.subject or '-':<36} seq {sequence:<10} "
            f"{signature} -> {received.status}")
    if received.error:
        line += f" ({received.error})"
    return line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.webhook_receiver",
                                     description="A webhook endpoint for the demo: "
                                     "verifies and prints every request.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret-file", required=True,
                        help="whsec_<base64> secrets, one a line; re-read when changed")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--path", help="answer 404 to any other request target")
    parser.add_argument("--fail-first", type=int, default=0,
                        help="answer 503 to the first N requests")
    parser.add_argument("--retry-after", help="Retry-After of those 503 answers")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds to wait before each answer")
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    try:
        secrets = SecretFile(args.secret_file)
    except SecretFileError as exc:
        parser.error(str(exc))

    def show(received: Received) -> None:
        print(describe(received), flush=True)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    receiver = Receiver(secrets, port=args.port, host=args.host, path=args.path,
                        certfile=args.certfile, keyfile=args.keyfile,
                        fail_first=args.fail_first, retry_after=args.retry_after,
                        delay=args.delay, on_request=show)
    with receiver:
        print(f"listening on {receiver.url}", flush=True)
        while not stopping.wait(1.0):
            pass
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
