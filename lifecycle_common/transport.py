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
    """The URL with every password replaced, for error messages and logs."""
    return re.sub(r"(?<=[/,])([^:/@,]*):[^@/,]*@", r"\1:***@", transport_url)


def parse(transport_url: str) -> tuple[list[Broker], str]:
    """Brokers (in failover order) and the virtual host of a transport URL."""
    try:
        url = urllib.parse.urlsplit(transport_url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise TransportURLError(f"transport_url {redact(transport_url)!r}: {exc}") from None
    if url.scheme not in SCHEMES:
        raise TransportURLError(
            f"transport_url {redact(transport_url)!r}: scheme {url.scheme!r} is not supported, "
            "use rabbit://")
    vhost = urllib.parse.unquote(url.path[1:]) if url.path.startswith("/") else ""
    brokers = []
    for netloc in filter(None, url.netloc.split(",")):
        credentials, _, hostport = netloc.rpartition("@")
        user, _, password = credentials.partition(":")
        hostname, port = _split_hostport(hostport, transport_url)
        brokers.append(Broker(hostname, port, urllib.parse.unquote(user),
                              urllib.parse.unquote(password)))
    if not brokers:
        raise TransportURLError(f"transport_url {redact(transport_url)!r} names no broker")
    return brokers, vhost


def _split_hostport(hostport: str, transport_url: str) -> tuple[str, int]:
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
        raise TransportURLError(f"transport_url {redact(transport_url)!r}: bad port {port!r}")
    return host, int(port)
