"""A webhook endpoint as fast as Python accepts requests, and a trivial client to
measure it: the two ends the ``webhook`` scenario needs beside the service itself.
Run by the benchmarks as ``python -m benchmarks.fast_receiver JSON``; prints JSON lines.

``{"role": "receiver", "expected": N, "timeout": S}``: listens on 127.0.0.1 (a free
port), prints ``{"ready": true, "port": P}``, then answers every POST ``204 No Content``
at once, on persistent HTTP/1.1 connections (one thread per connection), without
verifying anything: a signature's or a CloudEvent's cost is the subscriber's, not the
service's. It counts requests and distinct ``webhook-id`` headers (the CloudEvent's id,
stable across retries), and prints ``{"count", "distinct", "t_first", "t_last",
"connections", "body_bytes"}`` (wall-clock times: the first request's arrival, the
arrival of the request that made ``expected`` distinct ids) once it has ``expected``
distinct ids, or what it has after ``timeout`` seconds; then it goes on answering until
it is killed, so that the service's last answers are not refused.

The requests are read with a few lines of parsing, not with ``http.server``'s
``BaseHTTPRequestHandler``: that one parses each request's headers with the ``email``
package and writes a Server and a Date header per answer. Measured here with the client
below (16 at once, 20,000 requests of 800 bytes): about 139 us of CPU per request
against 45 for this one; and ThreadingHTTPServer's listen backlog of 5 refused
connections when 64 opened at once.

``{"role": "client", "url": U, "concurrency": C, "requests": N, "body_bytes": B}``: C
threads, each with one persistent ``http.client`` connection, POST N requests in all
(distinct ``webhook-id``s, a body of B bytes, headers like the service's); prints
``{"requests", "seconds", "rate", "failed"}``. Against the receiver, it says how many
requests per second the receiver takes from a client that does nothing else: what
bounds a service that sends as many at once.
"""

from __future__ import annotations

import http.client
import json
import socketserver
import sys
import threading
import time
import urllib.parse

ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"
MAX_LINE = 65536


class Tally:
    """Requests and distinct ids seen, the time of the first and of the one that made
    ``expected`` distinct ids."""

    def __init__(self, expected: int):
        self.expected = expected
        self.lock = threading.Lock()
        self.count = 0
        self.ids: set[bytes] = set()
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.connections = 0
        self.body_bytes = 0
        self.reached = threading.Event()

    def request(self, msg_id: bytes | None, length: int, now: float) -> None:
        with self.lock:
            self.count += 1
            self.body_bytes += length
            if self.t_first is None:
                self.t_first = now
            if msg_id is not None and msg_id not in self.ids:
                self.ids.add(msg_id)
                if len(self.ids) == self.expected:
                    self.t_last = now
                    self.reached.set()

    def report(self) -> dict:
        with self.lock:
            return {"count": self.count, "distinct": len(self.ids), "t_first": self.t_first,
                    "t_last": self.t_last, "connections": self.connections,
                    "body_bytes": self.body_bytes / self.count if self.count else 0}


def make_handler(tally: Tally):
    class Handler(socketserver.StreamRequestHandler):
        wbufsize = 0  # each answer goes out at once

        def handle(self) -> None:
            with tally.lock:
                tally.connections += 1
            rfile, wfile = self.rfile, self.wfile
            while True:
                line = rfile.readline(MAX_LINE)
                if not line:
                    return  # the client closed the connection
                if line in (b"\r\n", b"\n"):
                    continue
                length, msg_id, close = 0, None, False
                while True:
                    header = rfile.readline(MAX_LINE)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        msg_id = value.strip()
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                if length:
                    rfile.read(length)
                now = time.time()
                wfile.write(ANSWER)
                tally.request(msg_id, length, now)
                if close:
                    return
    return Handler


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def receive(args: dict) -> int:
    tally = Tally(args["expected"])
    server = Server(("127.0.0.1", 0), make_handler(tally))
    threading.Thread(target=server.serve_forever, name="accept", daemon=True).start()
    print(json.dumps({"ready": True, "port": server.server_address[1]}), flush=True)
    tally.reached.wait(args["timeout"])
    print(json.dumps(tally.report()), flush=True)
    threading.Event().wait()  # answer on until killed
    return 0


def send(args: dict) -> int:
    parts = urllib.parse.urlsplit(args["url"])
    concurrency, total = args["concurrency"], args["requests"]
    body = b"x" * int(args["body_bytes"])
    barrier = threading.Barrier(concurrency + 1)
    failed = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Content-Type": "application/cloudevents+json; charset=utf-8",
                   "webhook-timestamp": str(int(time.time())),
                   "webhook-signature": "v1," + "A" * 44,
                   "User-Agent": "fast-receiver-client"}
        barrier.wait()
        for i in range(n, total, concurrency):
            headers["webhook-id"] = f"client-{i}"
            try:
                conn.request("POST", parts.path or "/", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 300:
                    failed.append(i)
            except (OSError, http.client.HTTPException):
                failed.append(i)
                conn.close()
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - t0
    print(json.dumps({"requests": total, "seconds": seconds, "rate": total / seconds,
                      "failed": len(failed)}), flush=True)
    return 0


def main() -> int:
    args = json.loads(sys.argv[1])
    return send(args) if args.get("role") == "client" else receive(args)


if __name__ == "__main__":
    sys.exit(main())
