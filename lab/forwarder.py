"""A TCP forwarder in front of a real service, for outages on demand (tests and the
benchmarks' fault runs)."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpForwarder:
    """A TCP forwarder to a real service, which a test stops (every connection cut, the
    port refusing) and starts again on the same port: a broker outage on demand. Or it
    stalls: what the service sends is dropped while the connections stay open, as from
    a broker that takes messages and never answers (one without its cluster's
    majority)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self.stalled = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name="tcp-forwarder").start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for src, dst, stall in ((client, upstream, None), (upstream, client, self.stalled)):
                threading.Thread(target=self._pipe, args=(src, dst, stall), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, stall: threading.Event | None) -> None:
        try:
            while data := src.recv(65536):
                if stall is None or not stall.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
