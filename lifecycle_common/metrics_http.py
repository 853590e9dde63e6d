"""The HTTP endpoint of both services: ``GET /metrics`` (Prometheus text, or
OpenMetrics when the scraper asks for it) and ``GET /healthz`` (JSON, 503 while
failing), on ``[metrics] bind_host`` and ``bind_port``.

The server runs on daemon threads of its own; a scrape reads the registry's values
and the health callback, nothing else of the service's state, and never blocks it.

Bound: at most ``max_connections`` (32) connections hold a thread at once, each for one
request (HTTP/1.0, no keep-alive) that must arrive within ``request_timeout`` (10 s)
and be taken within as long again, and a connection beyond the cap is answered 503 and
closed without a thread, so idle or slow clients cost at most 32 threads and sockets and
lose them after 10 s.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from lifecycle_common.health import Report
from lifecycle_common.threads import named_thread

LOG = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
"""Seconds a connection has to send its whole request, and again to take the answer."""
MAX_CONNECTIONS = 32
"""Connections served at once; each holds a thread while it lasts."""

_REFUSAL_BODY = b"too many connections, try again\n"
_REFUSAL = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(_REFUSAL_BODY), _REFUSAL_BODY))


class BindError(OSError):
    """The endpoint's address cannot be bound (in use, not local, not permitted)."""


class _Server(http.server.HTTPServer):
    """A thread per connection, for at most ``max_connections`` connections at once."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, max_connections: int):
        self.max_connections = max_connections
        self.refused = 0
        self._open: set[socket.socket] = set()
        self._changed = threading.Condition()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: a thread for the connection, or a 503 and close."""
        with self._changed:
            admitted = len(self._open) < self.max_connections
            if admitted:
                self._open.add(request)
            else:
                self.refused += 1
                refused = self.refused
        if admitted:
            named_thread(lambda: self._serve(request, client_address), "metrics-conn",
                         daemon=True).start()
            return
        LOG.debug("metrics endpoint: refused a connection from %s, %d already open "
                  "(%d refused so far)", client_address[0], self.max_connections, refused)
        _refuse(request)
        self.shutdown_request(request)

    def _serve(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - handle_error logs it; the connection ends either way
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def shutdown_request(self, request) -> None:
        # Closed under the lock, so that close_connections never shuts down a descriptor
        # number that another socket has been given since.
        with self._changed:
            super().shutdown_request(request)
            self._open.discard(request)
            self._changed.notify_all()

    def handle_error(self, request, client_address) -> None:
        LOG.debug("metrics endpoint: connection from %s failed", client_address[0],
                  exc_info=True)

    def close_connections(self, timeout: float) -> bool:
        """Cut every open connection; True once their threads have all let go, within
        ``timeout`` seconds."""
        with self._changed:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return self._changed.wait_for(lambda: not self._open, timeout)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _refuse(sock: socket.socket) -> None:
    """Answer 503 without waiting: what the client sent so far is read (so that the close
    does not reset the connection under the answer) and the answer goes out if the
    socket takes it at once."""
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)
        except BlockingIOError:
            pass
        sock.send(_REFUSAL)
    except OSError:
        pass


class _ReadBefore(io.RawIOBase):
    """A socket's bytes until a deadline: a client that sends its request a byte at a
    time is dropped at the deadline like one that sends nothing."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class MetricsServer:
    def __init__(self, bind_host: str, bind_port: int, registry: CollectorRegistry,
                 health: Callable[[], Report], *, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        if request_timeout <= 0 or max_connections < 1:
            raise ValueError("request_timeout must be positive and max_connections at least 1")
        self._registry = registry
        self._health = health
        handler = _handler_class(self, request_timeout)
        try:
            server_class = _Server6 if ":" in bind_host else _Server
            self._server = server_class((bind_host, bind_port), handler, max_connections)
        except OSError as exc:
            raise BindError(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}") from exc
        self._thread = named_thread(self._server.serve_forever, "metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def refused_connections(self) -> int:
        """Connections closed with a 503 because ``max_connections`` were already open."""
        return self._server.refused

    def start(self) -> "MetricsServer":
        self._thread.start()
        host, port = self._server.server_address[:2]
        LOG.info("metrics on http://%s:%d/metrics, health on /healthz", _url_host(host), port)
        return self

    def stop(self) -> None:
        """Stop accepting, cut the open connections, and wait (a few seconds at most)
        for their threads."""
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections(timeout=5)
        self._thread.join(5)

    # -- what a request gets ----------------------------------------------------------
    def metrics(self, accept: str) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(accept or "")
        return 200, content_type, encoder(self._registry)

    def healthz(self) -> tuple[int, str, bytes]:
        try:
            report = self._health()
        except Exception as exc:  # noqa: BLE001 - a health check that raises is an answer too
            LOG.exception("health check failed")
            body = {"status": "failing",
                    "checks": {"health": {"status": "failing",
                                          "detail": f"{type(exc).__name__}: {exc}"}}}
            return 503, "application/json", json.dumps(body).encode() + b"\n"
        code = 503 if report.failing else 200
        return code, "application/json", json.dumps(report.as_dict(), indent=1).encode() + b"\n"


def _handler_class(server: MetricsServer, request_timeout: float):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "lifecycle"
        sys_version = ""
        protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive
        timeout = request_timeout

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one that stops at the deadline
            self.rfile = io.BufferedReader(
                _ReadBefore(self.connection, time.monotonic() + request_timeout))

        def do_GET(self) -> None:  # noqa: N802 - the library's name
            self.connection.settimeout(request_timeout)  # to take the answer
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                answer = server.metrics(self.headers.get("Accept", ""))
            elif path in ("/healthz", "/health"):
                answer = server.healthz()
            else:
                answer = 404, "text/plain", b"not found: try /metrics or /healthz\n"
            code, content_type, body = answer
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 - the library's name
            LOG.debug("%s %s", self.address_string(), format % args)

    return Handler


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start(bind_host: str, bind_port: int, registry: CollectorRegistry,
          health: Callable[[], Report], *, request_timeout: float = REQUEST_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS) -> MetricsServer | None:
    """The endpoint, serving; None when ``bind_port`` is 0 (turned off)."""
    if bind_port == 0:
        return None
    return MetricsServer(bind_host, bind_port, registry, health, request_timeout=request_timeout,
                         max_connections=max_connections).start()

