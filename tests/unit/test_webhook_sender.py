"""The webhook's sender against real HTTP(S) endpoints on loopback ports: what each kind
of answer (or its absence) becomes, keep-alive, TLS, names resolved, and N requests at
once on its one I/O thread; the answer's parser (``http_response.ResponseParser``) is
also tested by table."""

from __future__ import annotations

import base64
import http.client
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
from lifecycle_webhook.http_response import MAX_RESPONSE_BYTES, ResponseParser
from lifecycle_webhook.http_sender import Job, Sender

SECRET = b"0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(SECRET).decode()
BODY = b'{"specversion":"1.0","id":"host-1:7:42","type":"io.libvirt-lifecycle.x"}'
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class Endpoint(ThreadingHTTPServer):
    """A loopback HTTP/1.1 server that records each request and answers it with
    ``behave(handler, body)`` (200 "ok" by default)."""

    daemon_threads = True
    request_queue_size = 128  # (socketserver's 5 drops connects of 32 at once: SYNs resent 1s on)

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
        sender = Sender(url, ca_file=ca_file, timeout=timeout,
                                       workers=workers, secrets=secrets,
                                       user_agent="lifecycle-webhook/test")
        senders.append(sender)
        return sender
    yield make
    for sender in senders:
        sender.close(timeout=2)


def job(token, body: bytes = BODY) -> Job:
    return Job(token, Request({"Content-Type": CONTENT_TYPE}, body), f"msg-{token}")


def collect(sender: Sender, count: int, timeout: float = 5.0) -> dict:
    """Wait on ``sender.fileno()`` (as the service's loop does: at most 0.5s at a time,
    its ``_IDLE_WAIT``) until ``count`` answers came; {token: answer}."""
    answers = {}
    poller = select.poll()
    poller.register(sender.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(answers) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(answers)} of {count} answers after {timeout}s")
        poller.poll(min(remaining, 0.5) * 1000)
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


def test_n_requests_at_once_with_workers_n(serve, make_sender):
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
    dead = wait_for(sender.dead_workers, 5, "the I/O thread to die")
    assert dead == ["webhook-sender"]


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
                          if t.name.startswith("webhook-sender")], 5, "the workers to end")
    with pytest.raises(RuntimeError):
        sender.submit(job(3))


def test_a_url_it_cannot_send_to_is_refused_at_once():
    for url in ("ftp://example.com/", "http:///path", "https://user:pw@example.com/"):
        with pytest.raises(ValueError):
            Sender(url, ca_file=None, timeout=1, workers=1,
                                  secrets=lambda: (SECRET,))


def _server_tls(pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context



# -- answers written by hand: what the loop's parser must read as http.client does ------

def raw(answer: bytes, *, close: bool = False, byte_by_byte: bool = False) -> Callable:
    """A behaviour writing ``answer`` as it is (then closing the connection if
    ``close``); ``byte_by_byte``: one byte a write, so that the client's reads split
    the head anywhere."""
    def behave(handler, body):
        if byte_by_byte:
            handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(answer)):
                handler.wfile.write(answer[i:i + 1])
                time.sleep(0.0005)  # (pacing the writes, not waiting for anything)
        else:
            try:
                handler.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # (a client that keeps 1 MiB of a longer answer closes before its end)
        handler.close_connection = close
    return behave


def test_a_chunked_answer(serve, make_sender):
    answer = (b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
              b"Retry-After: 3\r\n\r\n5;ext=1\r\nbusy \r\nA\r\n0123456789\r\n0\r\n"
              b"X-Trailer: t\r\n\r\n")
    endpoint = serve(raw(answer))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [(a.status, a.retry_after, a.detail) for a in answers.values()] == \
        [(503, "3", "503 Service Unavailable: busy 0123456789")] * 2
    assert len({s["client"] for s in endpoint.seen}) == 1  # read whole: the connection kept


def test_an_answer_without_a_length_is_read_until_the_endpoint_closes(serve, make_sender):
    endpoint = serve(raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
                         close=True))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [a.detail for a in answers.values()] == ["200 OK: all of it"] * 2
    assert len({s["client"] for s in endpoint.seen}) == 2


def test_100_continue_before_the_final_answer_is_skipped(serve, make_sender):
    endpoint = serve(raw(b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [a.detail for a in answers.values()] == ["201 Created: ok"] * 2
    assert len({s["client"] for s in endpoint.seen}) == 1


def test_any_1xx_before_the_final_answer_is_skipped(serve, make_sender):
    endpoint = serve(raw(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                         b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 204 No Content\r\n\r\n"))
    answer = send(make_sender(f"http://127.0.0.1:{endpoint.port}/"), job(1))[1]
    assert answer.detail == "204 No Content"


def test_an_answer_written_byte_by_byte(serve, make_sender):
    endpoint = serve(raw(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 12\r\n"
                         b"Content-Length: 4\r\n\r\nslow", byte_by_byte=True))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [(a.status, a.retry_after, a.detail) for a in answers.values()] == \
        [(429, "12", "429 Too Many Requests: slow")] * 2
    assert len({s["client"] for s in endpoint.seen}) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_beyond_1_mib_is_cut_and_its_connection_not_reused(serve, make_sender, chunked):
    body = b"x" * (2 * MAX_RESPONSE_BYTES)
    if chunked:
        answer = (b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"".join(b"%x\r\n%s\r\n" % (65536, body[i:i + 65536])
                             for i in range(0, len(body), 65536)) + b"0\r\n\r\n")
    else:
        answer = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
    endpoint = serve(raw(answer))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/")
    answers = send(sender, job(1)) | send(sender, job(2))
    assert [a.detail for a in answers.values()] == \
        ["500 Internal Server Error: " + "x" * 200] * 2
    assert len({s["client"] for s in endpoint.seen}) == 2


def test_many_requests_on_many_connections_are_each_answered_once(serve, make_sender):
    endpoint = serve(lambda h, body: reply(h, 204))
    sender = make_sender(f"http://127.0.0.1:{endpoint.port}/", workers=32)
    answers = send(sender, *[job(token) for token in range(500)], timeout=60)
    assert sorted(answers) == list(range(500))
    assert {a.detail for a in answers.values()} == {"204 No Content"}
    assert sorted(int(s["headers"]["webhook-id"][4:]) for s in endpoint.seen) == \
        list(range(500))
    assert len({s["client"] for s in endpoint.seen}) <= 32
    assert sender.in_flight() == 0 and sender.results() == []


# -- the loop's parser, by table ----------------------------------------------------------

PARSED = [  # answer, (status, reason, retry_after, body, reusable)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, "OK", None, b"ok", True)),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", (204, "No Content", None, b"", True)),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
     (200, "OK", None, b"", False)),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", (200, "OK", None, b"", False)),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
     (200, "OK", None, b"", True)),
    (b"HTTP/1.1 503 Busy\r\nRETRY-AFTER:  5 \r\ntransfer-encoding: Chunked\r\n\r\n"
     b"2\r\nab\r\n1 ; x=y\r\nc\r\n0\r\nT: 1\r\n\r\n", (503, "Busy", "5", b"abc", True)),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202\r\nContent-Length: 1\r\n\r\n!",
     (202, "", None, b"!", True)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", (200, "OK", None, b"ok", False)),
]


@pytest.mark.parametrize(("answer", "expected"), PARSED)
def test_the_parser_reads_an_answer_however_it_is_split(answer, expected):
    for pieces in ([answer], [answer[i:i + 1] for i in range(len(answer))],
                   [answer[:len(answer) // 2], answer[len(answer) // 2:]]):
        parser = ResponseParser()
        done = [parser.feed(piece) for piece in pieces]
        assert done[-1] and not any(done[:-1]) or "EXTRA" in answer.decode()
        assert (parser.status, parser.reason, parser.retry_after, parser.body,
                parser.reusable) == expected


@pytest.mark.parametrize(("answer", "error"), [
    (b"", http.client.RemoteDisconnected),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", http.client.IncompleteRead),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", http.client.IncompleteRead),
    (b"HTTP/1.1 200 OK\r\nContent-Le", http.client.IncompleteRead),
])
def test_the_parser_says_an_answer_cut_short(answer, error):
    parser = ResponseParser()
    assert not parser.feed(answer)
    with pytest.raises(error):
        parser.feed_eof()


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_the_parser_refuses_what_is_not_http(answer):
    with pytest.raises(http.client.HTTPException):
        ResponseParser().feed(answer)


def test_the_parser_reads_until_the_end_without_a_length():
    parser = ResponseParser()
    assert not parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert not parser.feed(b" more")
    assert parser.feed_eof() and parser.body == b"some more" and not parser.reusable


# -- names -------------------------------------------------------------------------------

@pytest.fixture
def names(monkeypatch):
    """``socket.getaddrinfo`` knowing three more names: ``webhook.test`` (127.0.0.1),
    ``nowhere.test`` (not known) and ``slow.test`` (answered once ``names.release`` is
    set); ``names.asked``: the threads that asked for them."""
    real = socket.getaddrinfo
    release = threading.Event()
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in ("webhook.test", "nowhere.test", "slow.test"):
            asked.append(threading.current_thread().name)
            if host == "nowhere.test":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            if host == "slow.test":
                release.wait(10)
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    getaddrinfo.asked, getaddrinfo.release = asked, release
    yield getaddrinfo
    release.set()


def test_a_name_is_resolved_and_the_loop_asks_on_its_resolver_thread(serve, make_sender, names):
    endpoint = serve()
    sender = make_sender(f"http://webhook.test:{endpoint.port}/")
    assert send(sender, job(1))[1].status == 200
    assert endpoint.seen[0]["headers"]["Host"] == f"webhook.test:{endpoint.port}"
    assert names.asked and all(n.startswith("webhook-resolver") for n in names.asked)


def test_a_name_that_cannot_be_resolved(make_sender, names):
    answer = send(make_sender("http://nowhere.test:8080/"), job(1))[1]
    assert answer.status is None
    assert answer.detail == "cannot resolve nowhere.test: Name or service not known"


def test_a_slow_resolution_counts_against_the_connect_timeout(serve, make_sender, names):
    endpoint = serve()
    sender = make_sender(f"http://slow.test:{endpoint.port}/", timeout=0.3)
    answer = send(sender, job(1))[1]
    assert answer.detail == f"timed out after 0.3s connecting to slow.test:{endpoint.port}"
    names.release.set()  # the resolution comes back: the next connection uses it
    assert send(sender, job(2))[2].status == 200


def test_https_with_several_connections_at_once(serve, make_sender, test_pki):
    endpoint = serve(tls=_server_tls(test_pki))
    sender = make_sender(f"https://localhost:{endpoint.port}/in", ca_file=str(test_pki.ca_cert),
                         workers=4)
    answers = send(sender, *[job(token) for token in range(40)], timeout=20)
    assert {a.status for a in answers.values()} == {200} and len(answers) == 40
    assert len(endpoint.seen) == 40 and len({s["client"] for s in endpoint.seen}) <= 4


def test_an_answer_before_the_whole_request_was_read_is_taken_and_not_sent_again():
    """An endpoint that answers 413 after the head of a 16 MB request, without reading
    its body, then closes: the 413 is the answer (not a reset), and the request is not
    sent again."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = []

    def serve_one():
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            seen.append(head.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    sender = Sender(f"http://127.0.0.1:{port}/", ca_file=None, timeout=5.0, workers=1,
                    secrets=lambda: (SECRET,))
    try:
        answer = send(sender, job(1, b"x" * 16_000_000), timeout=10)[1]
    finally:
        sender.close(1.0)
        listener.close()
    assert (answer.status, answer.detail) == (413, "413 Payload Too Large")
    assert len(seen) == 1


def test_an_answer_with_bare_line_feeds_is_read(serve, make_sender):
    """http.client reads them; so does the sender."""
    endpoint = serve(raw(b"HTTP/1.1 202 Accepted\nContent-Length: 2\n\nok"))
    answer = send(make_sender(f"http://127.0.0.1:{endpoint.port}/"), job(1))[1]
    assert (answer.status, answer.detail) == (202, "202 Accepted: ok")


@pytest.mark.parametrize("size", [b"0x2", b"1_0", b"+2", b"-1", b""])
def test_a_chunk_size_that_is_not_hex_digits_is_not_an_answer(size):
    parser = ResponseParser()
    with pytest.raises(http.client.HTTPException):
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size
                    + b"\r\nok\r\n0\r\n\r\n")
