"""oslo.messaging's ``transport_url``: the brokers, in failover order, and the vhost.

The option keeps oslo.messaging's syntax (``rabbit://user:pass@host:port,host2/vhost``)
so that operators configure this project like any OpenStack service; the services then
talk AMQP through kombu and py-amqp directly (``broker`` opens the connections; the
query keys are read there). Parsing is done here rather than by oslo.messaging, whose
import drags eventlet into the process.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

SCHEMES = ("rabbit", "amqp", "kombu")


class TransportURLError(ValueError):
    """The transport URL cannot be used to reach a RabbitMQ broker."""


@dataclasses.dataclass(frozen=True)
class Broker:
    hostname: str
    port: int
    username: str
    password: str


def redact(transport_url: str) -> str:
    """The URL with every password replaced by ``***``, for error messages and logs.

    The rule, so that no character of a password survives even where the URL is
    malformed (a password may hold any character, unescaped ``@ , / ? # :`` included):

    - The scheme is the text up to ``://`` (letters, digits, ``+ . -``); without one,
      the whole text is read as brokers.
    - The brokers part runs to the first ``/``, ``?`` or ``#`` after its *last* ``@``
      (urlsplit stops at the first one, inside such a password); the path and query
      after it are kept as they are.
    - Cut at each ``@``: the text before the first ``@`` is credentials; each later
      piece but the last is a host up to its first ``,`` and then the next broker's
      credentials, or, holding no ``,``, more of the same password (it held an ``@``);
      the last piece is hosts. For a well-formed URL this is ``parse()``'s reading.
    - Of each credentials field the user (up to the first ``:``) is kept and the rest,
      an empty password too, becomes ``***``.

    Where the text reads more than one way, more is hidden: an ``@`` in the vhost or
    query hides what precedes it back to the password (``rabbit://u:***@x``), and a
    broker without credentials followed by one with them loses its port and the next
    user (``rabbit://h1:***@h2/``). One shape cannot be told from two brokers and is
    read as ``parse()`` reads it: a password holding ``@`` and then ``,`` (``u:p@x,y@h``
    shows ``x,y``, as a host and a user); percent-encode such a password.
    """
    scheme = _SCHEME.match(transport_url)
    start = scheme.end() if scheme else 0
    rest = transport_url[start:]
    end = _first_delimiter(rest, rest.rfind("@") + 1)
    return transport_url[:start] + _redact_brokers(rest[:end]) + rest[end:]


_SCHEME = re.compile(r"[\x00-\x20]*[A-Za-z][A-Za-z0-9+.\-]*://")


def _first_delimiter(text: str, start: int) -> int:
    """Where the brokers part of ``text`` ends: its first ``/ ? #`` from ``start``."""
    found = [i for i in (text.find(c, start) for c in "/?#") if i >= 0]
    return min(found, default=len(text))


def _redact_brokers(brokers: str) -> str:
    pieces = brokers.split("@")
    if len(pieces) == 1:
        return brokers
    out = []
    credentials = pieces[0]
    for piece in pieces[1:-1]:
        host, comma, following = piece.partition(",")
        if not comma:  # two '@' with no broker between them: the password holds an '@'
            credentials += "@" + piece
            continue
        out.append(f"{_hide_password(credentials)}@{host},")
        credentials = following
    out.append(f"{_hide_password(credentials)}@{pieces[-1]}")
    return "".join(out)


def _hide_password(credentials: str) -> str:
    user, colon, _ = credentials.partition(":")
    return f"{user}:***" if colon else user


def parse(transport_url: str) -> tuple[list[Broker], str]:
    """Brokers (in failover order) and the virtual host of a transport URL."""
    try:
        url = urllib.parse.urlsplit(transport_url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise TransportURLError(
            f"transport_url {redact(transport_url)!r}: {_unquoted(str(exc))}") from None
    if url.scheme not in SCHEMES:
        raise TransportURLError(
            f"transport_url {redact(transport_url)!r}: scheme {url.scheme!r} is not supported, "
            "use rabbit://")
    vhost = urllib.parse.unquote(url.path[1:]) if url.path.startswith("/") else ""
    brokers = []
    ats_left = transport_url.count("@")
    for netloc in filter(None, url.netloc.split(",")):
        ats_left -= netloc.count("@")
        credentials, _, hostport = netloc.rpartition("@")
        user, _, password = credentials.partition(":")
        # Without an '@' of its own but with one further on, this "host:port" may be a
        # user and the start of a password that holds an unescaped ',', '/', '?' or '#'.
        hostname, port = _split_hostport(hostport, transport_url,
                                         port_may_be_password="@" not in netloc and ats_left > 0)
        brokers.append(Broker(hostname, port, urllib.parse.unquote(user),
                              urllib.parse.unquote(password)))
    if not brokers:
        raise TransportURLError(f"transport_url {redact(transport_url)!r} names no broker")
    return brokers, vhost


def _split_hostport(hostport: str, transport_url: str,
                    port_may_be_password: bool = False) -> tuple[str, int]:
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise TransportURLError(f"transport_url {redact(transport_url)!r}: a broker has no host")
    if not port:
        return host, 5672
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        shown = ("(not shown: it may be part of a password; percent-encode any ',', '/', "
                 "'?' or '#' in a password)" if port_may_be_password else repr(port))
        raise TransportURLError(f"transport_url {redact(transport_url)!r}: bad port {shown}")
    return host, int(port)


def _unquoted(detail: str) -> str:
    """urllib's message without the piece of the URL it quotes (it may hold a password)."""
    quotes = [i for i, char in enumerate(detail) if char in "'\""]
    if not quotes:
        return detail
    return detail[:quotes[0]] + "'***'" + detail[quotes[-1] + 1:]
