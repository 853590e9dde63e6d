"""The webhook sender against real HTTP(S) endpoints on loopback ports: what each kind
of answer (or its absence) becomes, keep-alive, TLS, and N requests at once."""

from __future__ import annotations

import base64
import select
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import pytest
import standardwebhooks

from lab.waiting import wait_for
from lifecycle_webhook.cloudevents import Request
from lifecycle_webhook.http_sender import Job, Sender

SECRET = b"0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(SECRET).decode()
BODY = b'{"specversion":"1.0","id":"host-1:7:42","type":"io.libvirt-lifecycle.x"}'
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class Endpoint(ThreadingHTTPServer):
    """A loopback HTTP/1.1 server that records each request and answers it with
    ``behave(handler, body)`` (200 "ok" by default)."""

    daemon_threads = True

    def __init__(self, behave: Optional[Callable] = None, tls: Optional[ssl.SSLContext] = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.behave = behave or (lambda handler, body: reply(handler, 200, b"ok"))
        self.seen: list[dict] = []  # path, headers, body, client (its port: the connection)
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0
        self.changed = threading.Condition(self.lock)
        self.release = threading.Event()  # ends the waits of behaviours that wait
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Endpoint = self.server
        with server.lock:
            server.seen.append({"path": self.path, "headers": dict(self.headers),
                                "body": body, "client": self.client_address[1]})
            server.active += 1
            server.most_active = max(server.most_active, server.active)
            server.changed.notify_all()
        try:
            server.behave(self, body)
        finally:
            with server.lock:
                server.active -= 1

    def log_message(self, format, *args):  # noqa: A002 (quiet)
        pass


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: Optional[dict] = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def serve():
    """``serve(behave, tls=None) -> Endpoint``, running; stopped after the test."""
    started = []

    def start(behave=None, tls=None) -> Endpoint:
        endpoint = Endpoint(behave, tls)
        endpoint.thread.start()
        started.append(endpoint)
        return endpoint
    yield start
    for endpoint in started:
        endpoint.stop()


@pytest.fixture
def make_sender():
    """``make_sender(url, **options) -> Sender``; closed after the test."""
    senders = []

    def make(url, *, ca_file=None, timeout=5.0, workers=1, secrets=lambda: (SECRET,)):
        sender = Sender(url, ca_file=ca_file, timeout=timeout, workers=workers,
                        secrets=secrets, user_agent="lifecycle-webhook/test")
        senders.append(sender)
        return sender
    yield make
    for sender in senders:
        sender.close(timeout=2)


def job(token, body: bytes = BODY) -> Job:
    return Job(token, Request({"Content-Type": CONTENT_TYPE}, body), f"msg-{token}")


def collect(sender: Sender, count: int, timeout: float = 5.0) -> dict:
    """Wait on ``sender.fileno()`` (as the service's loop does) until ``count``
    answers came; {token: answer}."""
    answers = {}
    poller = select.poll()
    poller.register(sender.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(answers) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(answers)} of {count} answers after {timeout}s")
        poller.poll(remaining * 1000)
        answers.update((j.token, answer) for j, answer in sender.results())
    return answers


def send(sender: Sender, *jobs: Job, timeout: float = 5.0) -> dict:
    for each in jobs:
        sender.submit(each)
    return collect(sender, len(jobs), timeout)


def test_accepted_with_the_body_and_a_signature_the_subscriber_verifies(serve, make_sender):
    endpoint = serve()
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/hooks/libvirt?tenant=a")
    answer = send(sender, job(1))[1]
    assert (answer.status, answer.retry_after, answer.detail) == (200, None, "200 OK: ok")
    [seen] = endpoint.seen
    assert seen["path"] == "/hooks/libvirt?tenant=a" and seen["body"] == BODY
    headers = seen["headers"]
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Host"] == f"127.0.0.1:{endpoint.port}"
    assert headers["User-Agent"] == "lifecycle-webhook/test"
    assert headers["webhook-id"] == "msg-1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    standardwebhooks.Webhook(WHSEC).verify(seen["body"], headers)  # raises if not
    assert sender.in_flight() == 0


def test_every_secret_returned_at_send_time_signs(serve, make_sender):
    endpoint = serve()
    keys = [(b"a" * 32,)]
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", secrets=lambda: keys[0])
    send(sender, job(1))
    keys[0] = (b"b" * 32, b"c" * 32)  # rotated, as SecretFile.secrets() would return
    send(sender, job(2))
    first, second = endpoint.seen
    standardwebhooks.Webhook(base64.b64encode(b"a" * 32).decode()).verify(
        first["body"], first["headers"])
    for key in (b"b" * 32, b"c" * 32):
        standardwebhooks.Webhook(base64.b64encode(key).decode()).verify(
            second["body"], second["headers"])


def test_an_error_status_comes_back_with_retry_after_and_the_body_on_one_line(
        serve, make_sender):
    text = b"busy\r\n\tnow \x00" + b"x" * 500
    endpoint = serve(lambda h, body: reply(h, 503, text, {"Retry-After": "7"}))
    answer = send(make_sender(f"http://127.0.0.1:{endpoint.port}/"), job(1))[1]
    assert (answer.status, answer.retry_after) == (503, "7")
    assert answer.detail == "503 Service Unavailable: busy now " + "x" * 191


def test_connection_refused(make_sender):
    with socket.socket() as bound:  # bound, not listening: connecting is refused
        bound.bind(("127.0.0.1", 0))
        sender = make_sender(f"http://127.0.0.1:{bound.getsockname()[1]}/")
        answer = send(sender, job(1))[1]
    assert answer.status is None and answer.retry_after is None
    assert "connection refused" in answer.detail


def test_an_endpoint_slower_than_the_timeout(serve, make_sender):
    endpoint = serve(lambda h, body: h.server.release.wait(10))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", timeout=0.3)
    answer = send(sender, job(1))[1]
    assert answer.status is None
    assert answer.detail.startswith("timed out after 0.3s")
    assert len(endpoint.seen) == 1  # sent once: retrying is the service's decision


def test_https_trusted_through_ca_file(serve, make_sender, test_pki):
    endpoint = serve(tls=_server_tls(test_pki))
    sender = make_sender(f"https://localhost:{endpoint.port}/in", ca_file=str(test_pki.ca_cert))
    assert send(sender, job(1), job(2))[2].status == 200
    assert [s["path"] for s in endpoint.seen] == ["/in", "/in"]
    assert len({s["client"] for s in endpoint.seen}) == 1  # one TLS connection, kept


@pytest.mark.parametrize(("host", "ca", "words"), [
    ("localhost", None, "certificate verify failed"),  # the system's CAs: not ours
    ("localhost", "other_ca_cert", "certificate verify failed"),
    ("127.0.0.1", "ca_cert", "mismatch"),  # the certificate names localhost only
])
def test_https_not_trusted(serve, make_sender, test_pki, host, ca, words):
    endpoint = serve(tls=_server_tls(test_pki))
    ca_file = str(getattr(test_pki, ca)) if ca else None
    answer = send(make_sender(f"https://{host}:{endpoint.port}/", ca_file=ca_file), job(1))[1]
    assert answer.status is None
    assert answer.detail.startswith("TLS: ") and words in answer.detail
    assert endpoint.seen == []


def test_keep_alive_after_the_endpoint_closed_the_idle_connection(serve, make_sender):
    def answer_then_close(handler, body):
        reply(handler, 200, b"ok")  # (no "Connection: close": the client cannot know)
        handler.close_connection = True
    endpoint = serve(answer_then_close)
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    assert send(sender, job(1))[1].status == 200
    assert send(sender, job(2))[2].status == 200
    assert len({s["client"] for s in endpoint.seen}) == 2


def test_a_request_lost_on_a_reused_connection_is_sent_again_on_a_fresh_one(
        serve, make_sender):
    connections: dict[int, int] = {}  # client port -> requests on it

    def drop_the_second_request_of_the_first_connection(handler, body):
        port = handler.client_address[1]
        connections[port] = connections.get(port, 0) + 1
        if connections[port] == 2 and len(connections) == 1:
            handler.close_connection = True  # read it, never answered
            return
        reply(handler, 200, b"ok")
    endpoint = serve(drop_the_second_request_of_the_first_connection)
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    assert send(sender, job(1))[1].status == 200
    assert send(sender, job(2))[2].status == 200
    assert [s["body"] for s in endpoint.seen] == [BODY, BODY, BODY]
    assert list(connections.values()) == [2, 1]


def test_a_fresh_connection_closed_without_an_answer_is_not_sent_again(serve, make_sender):
    def never_answer(handler, body):
        handler.close_connection = True
    endpoint = serve(never_answer)
    answer = send(make_sender(f"http://127.0.0.1:{endpoint.port}/"), job(1))[1]
    assert answer.status is None and "without an answer" in answer.detail
    assert len(endpoint.seen) == 1


def test_connection_close_from_the_endpoint_is_honoured(serve, make_sender):
    endpoint = serve(lambda h, body: reply(h, 202, b"", {"Connection": "close"}))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [a.detail for a in answers.values()] == ["202 Accepted", "202 Accepted"]
    assert len({s["client"] for s in endpoint.seen}) == 2


def test_n_workers_send_n_requests_at_once(serve, make_sender):
    def wait_for_all_four(handler, body):
        with handler.server.changed:
            handler.server.changed.wait_for(lambda: handler.server.most_active >= 4, timeout=5)
        reply(handler, 200, b"ok")
    endpoint = serve(wait_for_all_four)
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", workers=4)
    for token in range(4):
        sender.submit(job(token))
    wait_for(lambda: endpoint.most_active == 4, 5, "4 requests at the endpoint at once")
    answers = collect(sender, 4)
    assert {a.status for a in answers.values()} == {200}
    assert sender.in_flight() == 0


def test_a_worker_survives_an_unexpected_error(serve, make_sender):
    calls = []

    def secrets():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("secret store broken")
        return (SECRET,)
    endpoint = serve()
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", secrets=secrets)
    first = send(sender, job(1))[1]
    assert first.status is None and "secret store broken" in first.detail
    assert send(sender, job(2))[2].status == 200  # the same (only) worker
    assert len(endpoint.seen) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_is_named_for_the_health_check(serve, make_sender):
    def secrets():
        raise SystemExit  # ends a thread (what no exception of an attempt can do)
    endpoint = serve()
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", workers=2, secrets=secrets)
    assert sender.dead_workers() == []
    sender.submit(job(1))
    dead = wait_for(sender.dead_workers, 5, "a worker to die")
    assert len(dead) == 1 and dead[0] in ("webhook-sender-1", "webhook-sender-2")


def test_close_stops_the_workers_and_answers_what_was_not_sent(serve, make_sender):
    endpoint = serve(lambda h, body: h.server.release.wait(10))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", workers=1)
    sender.submit(job(1))
    wait_for(lambda: endpoint.seen, 5, "the first request at the endpoint")
    sender.submit(job(2))
    sender.close(timeout=0.2)  # the first is still waiting for its answer: cut short
    answers = collect(sender, 2)
    assert answers[1].status is None and answers[2].status is None
    assert answers[2].detail == "not sent: the sender was closed"
    assert len(endpoint.seen) == 1
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name.startswith("webhook-sender-")], 5, "the workers to end")
    with pytest.raises(RuntimeError):
        sender.submit(job(3))


def test_a_url_it_cannot_send_to_is_refused_at_once():
    for url in ("ftp://example.com/", "http:///path", "https://user:pw@example.com/"):
        with pytest.raises(ValueError):
            Sender(url, ca_file=None, timeout=1, workers=1, secrets=lambda: (SECRET,))


def _server_tls(pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context

