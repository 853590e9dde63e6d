"""An HTTP/1.1 answer, read as its bytes arrive, and what the service is told of it.
Pure: bytes in, the status, ``Retry-After`` and a line of detail out; nothing here
touches a socket.

``ResponseParser`` is the webhook sender's own (``http.client`` parsed headers with the
``email`` package and cost a sixth of the service's CPU); ``answer_detail`` and
``describe_failure`` say in one line what the endpoint answered, or what went wrong.
"""

from __future__ import annotations

import http
import http.client
import re
import socket
import ssl
from typing import Optional

DETAIL_BODY_CHARS = 200  # of the endpoint's answer, in Answer.detail
MAX_RESPONSE_BYTES = 1 << 20  # read to keep the connection; a longer answer closes it

_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
# Lines end in CRLF, or a bare LF (as http.client reads them too).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers, at most
MAX_HEADERS = 100     # as http.client


# -- the answer, parsed (pure) -----------------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """One HTTP/1.1 answer, fed as its bytes arrive: ``feed(data)`` and, when the
    connection ends, ``feed_eof()``; each returns True once the answer is whole.

    Interim answers (1xx) are skipped. The body is read by ``Content-Length``, by
    ``Transfer-Encoding: chunked``, or up to the end of the connection when neither is
    given; a 204 or 304 has none. Up to ``MAX_RESPONSE_BYTES`` of it are kept: a longer
    one ends the answer there (``reusable`` is then False, as for an answer read to the
    connection's end, an endpoint's ``Connection: close`` or bytes beyond the answer).
    Raises ``http.client.RemoteDisconnected`` for an end before any byte, and another
    ``http.client.HTTPException`` for what is not an HTTP answer or ends too early
    (``head_done`` says whether the status was read by then)."""

    __slots__ = ("status", "reason", "retry_after", "reusable", "head_done", "started",
                 "_buf", "_mode", "_left", "_body", "_scanned")

    def __init__(self) -> None:
        self.status: Optional[int] = None
        self.reason = ""
        self.retry_after: Optional[str] = None
        self.reusable = True
        self.head_done = False  # the final answer's status and headers are read
        self.started = False    # any byte came
        self._buf = bytearray()
        self._mode = _HEAD
        self._left = 0          # bytes of the body (or of the chunk) still to come
        self._body = bytearray()
        self._scanned = 0       # of _buf, searched for the head's end already

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def feed(self, data: bytes) -> bool:
        if not data:
            return self._mode == _DONE
        self.started = True
        if self._mode == _DONE:
            self.reusable = False  # more than the answer: the connection is not clean
            return True
        buf = self._buf
        buf += data
        while True:
            mode = self._mode
            if mode == _HEAD:
                found = _HEAD_END.search(buf, max(0, self._scanned - 3))
                if found is None:
                    self._scanned = len(buf)
                    if len(buf) > MAX_HEAD:
                        raise http.client.LineTooLong(f"answer's head over {MAX_HEAD} bytes")
                    return False
                head = bytes(buf[:found.start()])
                del buf[:found.end()]
                self._scanned = 0
                self._read_head(head)
            elif mode == _LENGTH or mode == _CHUNK_DATA:
                take = min(self._left, len(buf))
                if take:
                    self._keep(buf[:take])
                    del buf[:take]
                    self._left -= take
                if self._mode == _DONE:
                    continue  # (kept the most it keeps)
                if self._left:
                    return False
                self._mode = _DONE if mode == _LENGTH else _CHUNK_END
            elif mode == _CHUNK_SIZE or mode == _TRAILERS:
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise http.client.LineTooLong("chunk size or trailer line")
                    return False
                line = bytes(buf[:end]).rstrip(b"\r")
                del buf[:end + 1]
                if mode == _TRAILERS:
                    if not line:
                        self._mode = _DONE
                    continue
                digits = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    raise http.client.IncompleteRead(bytes(self._body))
                size = int(digits, 16)
                if size == 0:
                    self._mode = _TRAILERS
                else:
                    self._left, self._mode = size, _CHUNK_DATA
            elif mode == _CHUNK_END:
                if buf[:1] == b"\n":
                    del buf[:1]
                elif len(buf) < 2:
                    return False
                elif buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    raise http.client.IncompleteRead(bytes(self._body))
                self._mode = _CHUNK_SIZE
            elif mode == _UNTIL_CLOSE:
                if buf:
                    self._keep(buf)
                    buf.clear()
                return self._mode == _DONE
            else:  # _DONE
                if buf:
                    self.reusable = False
                    buf.clear()
                return True

    def feed_eof(self) -> bool:
        """The endpoint ended the connection: True if that ends the answer whole."""
        self.reusable = False
        if self._mode == _DONE:
            return True
        if self._mode == _UNTIL_CLOSE:
            self._mode = _DONE
            return True
        if not self.started:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        raise http.client.IncompleteRead(bytes(self._body),
                                         self._left if self._left else None)

    def _keep(self, data) -> None:
        room = MAX_RESPONSE_BYTES - len(self._body)
        if len(data) < room:
            self._body += data
            return
        self._body += data[:room]  # the most kept: the answer ends here, its connection too
        if len(data) > room or self._mode != _LENGTH or self._left > len(data):
            self.reusable = False
            self._mode = _DONE
        # (a Content-Length of exactly the most kept ends whole: the caller's _DONE)

    def _read_head(self, head: bytes) -> None:
        lines = _LINE_END.split(head)
        status_line = lines[0].decode("iso-8859-1")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(status_line[:100])
        status = int(code)
        if status < 100:
            raise http.client.BadStatusLine(status_line[:100])
        if len(lines) > MAX_HEADERS + 1:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the next head
        connection = length = encoding = retry_after = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue  # (a folded line: none of the headers read here is folded)
            name = name.strip().lower()
            if name == b"content-length":
                length = value.strip()
            elif name == b"transfer-encoding":
                encoding = value.strip().lower()
            elif name == b"connection":
                connection = value.strip().lower()
            elif name == b"retry-after":
                text = value.strip().decode("iso-8859-1")
                retry_after = text if retry_after is None else f"{retry_after}, {text}"
        self.status, self.reason, self.retry_after = status, reason.strip(), retry_after
        self.head_done = True
        tokens = {t.strip() for t in connection.split(b",")} if connection else ()
        if version == "HTTP/1.0":
            self.reusable = b"keep-alive" in tokens
        elif b"close" in tokens:
            self.reusable = False
        if status in (204, 304):
            self._mode = _DONE
        elif encoding is not None and encoding.split(b",")[-1].strip() == b"chunked":
            self._mode = _CHUNK_SIZE
        elif length is not None and length.isdigit():
            self._left = int(length)
            self._mode = _LENGTH if self._left else _DONE
        else:  # (as http.client: no length, or one it cannot read: up to the end)
            self._mode = _UNTIL_CLOSE
            self.reusable = False


def describe_failure(exc: BaseException, *, host: str, port: int, timeout: float,
                     connecting: bool) -> str:
    """What went wrong with one attempt, in words, for ``Answer.detail`` (both senders
    say it alike: ``connecting`` is whether the connection was not yet up)."""
    where = f"{host}:{port}"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        doing = f"connecting to {where}" if connecting else "waiting for the answer"
        return f"timed out after {timeout}s {doing}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed by the endpoint without an answer"
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return f"connection reset by the endpoint ({exc.strerror or exc})"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer: {type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, OSError):
        return f"connection to {where} failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"[:300]


def answer_detail(status: int, reason: str, data: bytes) -> str:
    """ "503 Service Unavailable: <the body's first 200 chars>", on one line."""
    if not reason:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    head = f"{status} {reason}".rstrip()
    text = _UNPRINTABLE.sub(" ", data.decode("utf-8", errors="replace")).strip()
    return f"{head}: {text[:DETAIL_BODY_CHARS]}" if text else head
