"""The HTTP endpoint of both services: ``GET /metrics`` (Prometheus text, or
OpenMetrics when the scraper asks for it) and ``GET /healthz`` (JSON, 503 while
failing), on ``[metrics] bind_host`` and ``bind_port``.

The server runs on daemon threads of its own; a scrape reads the registry's values
and the health callback, nothing else of the service's state, and never blocks it.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import socketserver
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from lifecycle_common.health import Report
from lifecycle_common.threads import named_thread

LOG = logging.getLogger(__name__)


class BindError(OSError):
    """The endpoint's address cannot be bound (in use, not local, not permitted)."""


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    def __init__(self, bind_host: str, bind_port: int, registry: CollectorRegistry,
                 health: Callable[[], Report]):
        self._registry = registry
        self._health = health
        handler = _handler_class(self)
        try:
            server_class = _Server6 if ":" in bind_host else _Server
            self._server = server_class((bind_host, bind_port), handler)
        except OSError as exc:
            raise BindError(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}") from exc
        self._thread = named_thread(self._server.serve_forever, "metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "MetricsServer":
        self._thread.start()
        host, port = self._server.server_address[:2]
        LOG.info("metrics on http://%s:%d/metrics, health on /healthz", _url_host(host), port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
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


def _handler_class(server: MetricsServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "lifecycle"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - the library's name
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
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 - the library's name
            LOG.debug("%s %s", self.address_string(), format % args)

    return Handler


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start(bind_host: str, bind_port: int, registry: CollectorRegistry,
          health: Callable[[], Report]) -> MetricsServer | None:
    """The endpoint, serving; None when ``bind_port`` is 0 (turned off)."""
    if bind_port == 0:
        return None
    return MetricsServer(bind_host, bind_port, registry, health).start()

