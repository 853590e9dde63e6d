"""The /metrics endpoint's bounds over real sockets on a loopback port: a cap on
connections (beyond it a 503 and no thread), a deadline for each request, one request
per connection."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from lifecycle_common import health, metrics_http

GET_METRICS = b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"


@contextlib.contextmanager
def serving(request_timeout: float, max_connections: int = metrics_http.MAX_CONNECTIONS):
    registry = CollectorRegistry()
    Counter("lifecycle_test_things_total", "Things.", registry=registry).inc(7)
    server = metrics_http.MetricsServer("127.0.0.1", 0, registry, lambda: health.report([]),
                                        request_timeout=request_timeout,
                                        max_connections=max_connections).start()
    try:
        yield server
    finally:
        server.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection (a reset counts as a close);
    AssertionError if it has not closed it within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    else:
        raise AssertionError(f"the server had not closed the connection after {timeout}s")
    return b"".join(chunks)


def scrape(port: int, timeout: float = 5) -> bytes:
    with connect(port) as sock:
        try:
            sock.sendall(GET_METRICS)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # refused before the request went out
        return read_to_eof(sock, timeout)


def is_refusal(answer: bytes) -> bool:
    """A 503, or a close before any answer: the two ways a connection over the cap ends."""
    return answer == b"" or answer.startswith(b"HTTP/1.0 503 ")


def test_connections_beyond_the_cap_are_refused_at_once_and_get_no_thread(wait_for):
    cap = 4
    with serving(request_timeout=30, max_connections=cap) as server, \
            contextlib.ExitStack() as held_open:
        baseline = threading.active_count()
        held = [held_open.enter_context(connect(server.port)) for _ in range(cap)]
        wait_for(lambda: threading.active_count() >= baseline + cap, timeout=10,
                 message=lambda: f"{cap} connection threads, not "
                                 f"{threading.active_count() - baseline}")

        # Three times the cap more, idle or asking for /metrics: each is answered (503 or
        # closed) at once, far sooner than the 30 s the held ones may keep their threads.
        idle = [held_open.enter_context(connect(server.port)) for _ in range(2 * cap)]
        answers = [read_to_eof(sock, timeout=5) for sock in idle]
        answers += [scrape(server.port) for _ in range(cap)]
        assert all(is_refusal(answer) for answer in answers), answers
        assert server.refused_connections == 3 * cap
        assert threading.active_count() <= baseline + cap

        # The held connections still have their threads: one of them is served.
        held[0].sendall(GET_METRICS)
        answer = read_to_eof(held[0], timeout=5)
        assert answer.startswith(b"HTTP/1.0 200 ") and b"lifecycle_test_things_total 7.0" in answer


def test_a_scrape_succeeds_once_the_idle_connections_filling_the_cap_time_out(wait_for):
    """What the design guarantees: idle clients can fill the cap, but only for
    ``request_timeout``; after that the scraper is served."""
    cap, timeout = 4, 0.5
    with serving(request_timeout=timeout, max_connections=cap) as server, \
            contextlib.ExitStack() as held_open:
        baseline = threading.active_count()
        held = [held_open.enter_context(connect(server.port)) for _ in range(cap)]
        wait_for(lambda: threading.active_count() >= baseline + cap, timeout=10)
        started = time.monotonic()
        assert is_refusal(scrape(server.port))  # the cap is full
        for sock in held:
            assert read_to_eof(sock, timeout=5) == b""  # dropped by the server, unanswered
        assert time.monotonic() - started < 5
        wait_for(lambda: threading.active_count() <= baseline, timeout=5,
                 message="the dropped connections' threads to end")

        answer = scrape(server.port)
        assert answer.startswith(b"HTTP/1.0 200 ") and b"lifecycle_test_things_total 7.0" in answer


def test_an_idle_connection_is_closed_after_the_timeout():
    timeout = 0.5
    with serving(request_timeout=timeout) as server, connect(server.port) as sock:
        started = time.monotonic()
        assert read_to_eof(sock, timeout=5) == b""
        assert time.monotonic() - started >= timeout - 0.1  # not before its time


def test_a_client_sending_its_request_a_byte_at_a_time_is_dropped_at_the_deadline():
    """The timeout bounds the whole request, not each read: bytes trickling in do not
    keep the connection."""
    timeout = 0.5
    trickle = b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 10_000
    with serving(request_timeout=timeout) as server, connect(server.port) as sock:
        started = time.monotonic()
        closed_after = None
        for byte in trickle:
            if time.monotonic() - started > 5:
                break
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            # The pause between two bytes is a wait for the server to close the connection.
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                assert sock.recv(1024) == b""  # closed without an answer
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the server still read the trickle after 5 s"
    assert timeout - 0.1 <= closed_after < 5


def test_one_request_per_connection_even_when_the_client_asks_to_keep_alive():
    with serving(request_timeout=30) as server, connect(server.port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
        answer = read_to_eof(sock, timeout=5)  # closed after the answer, not after 30 s
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert answer.count(b"HTTP/1.") == 1 and b"\r\nConnection: close\r\n" in answer


def test_stop_cuts_the_open_connections_and_returns_promptly(wait_for):
    with contextlib.ExitStack() as held_open:
        with serving(request_timeout=30) as server:
            baseline = threading.active_count()
            held = [held_open.enter_context(connect(server.port)) for _ in range(3)]
            wait_for(lambda: threading.active_count() >= baseline + 3, timeout=10)
            started = time.monotonic()
        assert time.monotonic() - started < 5  # server.stop(), on leaving serving()
        for sock in held:
            assert read_to_eof(sock, timeout=5) == b""


@pytest.mark.parametrize("arguments", [{"request_timeout": 0}, {"max_connections": 0}])
def test_bounds_must_be_positive(arguments):
    with pytest.raises(ValueError):
        metrics_http.MetricsServer("127.0.0.1", 0, CollectorRegistry(), lambda: health.report([]),
                                   **arguments)
