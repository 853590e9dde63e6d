"""The one place broker connections are opened: for the agent, the consumer and
``lifecycle-manage``.

``settings(conf)`` reads ``transport_url`` (its query keys included) and
``[oslo_messaging_rabbit]`` (whose options, ``RABBIT_OPTS``, are declared here) into
``BrokerSettings`` once, at start, so that a bad value stops the service with a message
naming it; a service's ``Connector`` opens each of its connections to the first broker
that answers, in failover order, with the heartbeat, timeouts, TLS and login method
every service shares.

TLS: the broker's certificate is always verified, against ``ssl_ca_file`` (or the
system's CAs), and so is its name, the host as written in ``transport_url``, unless
``ssl_enforce_hostname_verification`` is false. That is stricter than oslo.messaging,
which verifies nothing without ``ssl_ca_file``. Each broker is verified against its own
name: kombu's failover would keep the first broker's name for the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import ssl
import time
import urllib.parse
from typing import Callable, Optional

import amqp
import amqp.spec
import kombu
import kombu.exceptions
from oslo_config import cfg

from lifecycle_common import health, transport
from lifecycle_common.errors import ConfigError

LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open the TCP connection, the TLS handshake and login
# Seconds a blocking write to a connection may wait for the broker to take any of it
# (the socket's SO_SNDTIMEO): py-amqp's own writes (heartbeats, methods, acks) and
# everything written over TLS. Past it the write fails (OSError) and the connection is
# given up. Without it a broker that stops reading (a blocked connection, a node
# without its majority) keeps a write, and its thread, waiting for ever.
WRITE_TIMEOUT = 30.0
GROUP = "oslo_messaging_rabbit"
# A query key oslo.messaging's listeners take that changes nothing here: the exchange
# and the queues are always durable.
_NO_OP_QUERY_KEYS = {"amqp_durable_queues": True}
_TLS_VERSIONS = {
    "": (ssl.TLSVersion.TLSv1_2, None), "sslv23": (ssl.TLSVersion.TLSv1_2, None),
    "tls": (ssl.TLSVersion.TLSv1_2, None),
    "tlsv1_2": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    "tlsv1_3": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
}


class BrokerConnectError(ConnectionError):
    """No broker of ``transport_url`` could be connected to; the message says why, for
    each broker tried."""


@dataclasses.dataclass(frozen=True)
class TLS:
    ca_file: str              # "" for the system's CAs
    cert_file: str            # "" for no client certificate
    key_file: str
    minimum: ssl.TLSVersion
    maximum: Optional[ssl.TLSVersion]
    verify_hostname: bool

    def options(self, hostname: str) -> dict:
        """py-amqp's ``ssl`` options to reach ``hostname``: the certificate required
        and, unless turned off, its name checked (and sent, SNI)."""
        options = {"cert_reqs": ssl.CERT_REQUIRED, "tls_minimum_version": self.minimum}
        if self.verify_hostname:  # (kombu would fill a None in with the hostname)
            options["server_hostname"] = hostname
        if self.maximum is not None:
            options["tls_maximum_version"] = self.maximum
        if self.ca_file:
            options["ca_certs"] = self.ca_file
        if self.cert_file:
            options["certfile"] = self.cert_file
            options["keyfile"] = self.key_file or self.cert_file
        return options


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    brokers: tuple[transport.Broker, ...]
    vhost: str
    login_method: str = "AMQPLAIN"
    tls: Optional[TLS] = None
    heartbeat: int = 30
    failover: str = "round-robin"
    connect_timeout: float = CONNECT_TIMEOUT

    def login_user(self, broker: transport.Broker) -> str:
        """The user the broker knows this service as: the URL's user, or with
        EXTERNAL the common name of the client certificate (RabbitMQ's
        ``ssl_cert_login_from = common_name``)."""
        if self.login_method == "EXTERNAL":
            return certificate_common_name(self.tls.cert_file)
        return broker.username or "guest"


def plain(transport_url: str) -> BrokerSettings:
    """Settings for ``transport_url`` alone, with every option at its default (no TLS):
    for tests and benchmarks that connect to the machine's broker."""
    brokers, vhost = transport.parse(transport_url)
    return BrokerSettings(brokers=tuple(brokers), vhost=vhost)


# [oslo_messaging_rabbit], declared beside settings(), which reads them; the services
# register them (config.register_common_opts) and list them for oslo-config-generator.
# oslo.messaging's own names, so that a service's TLS settings carry over; each may also
# be given as a query key of transport_url (?ssl=1), which wins, as with oslo.messaging.
RABBIT_OPTS = [
    cfg.BoolOpt("ssl", default=False,
                help="Connect to the broker over TLS. The broker's certificate is always "
                     "verified (against ssl_ca_file, or the system's CAs), and its name "
                     "too unless ssl_enforce_hostname_verification is false. '?ssl=1' on "
                     "transport_url does the same."),
    cfg.StrOpt("ssl_ca_file", default="",
               help="PEM file of the CA certificates the broker's certificate must chain "
                    "to; empty: the system's CAs."),
    cfg.StrOpt("ssl_cert_file", default="",
               help="PEM file of this service's client certificate, presented to the "
                    "broker (required for rabbit_login_method = EXTERNAL)."),
    cfg.StrOpt("ssl_key_file", default="",
               help="PEM file of the client certificate's private key; empty: it is in "
                    "ssl_cert_file."),
    cfg.StrOpt("ssl_version", default="",
               help="TLS version: empty (TLS 1.2 or newer, the best both sides speak), "
                    "TLSv1_2 or TLSv1_3 (that version only). SSLv23 and TLS mean empty; "
                    "older versions are refused."),
    cfg.BoolOpt("ssl_enforce_hostname_verification", default=True,
                help="Verify that the broker's certificate names the host in "
                     "transport_url. Turning it off still verifies the certificate chain."),
    cfg.StrOpt("rabbit_login_method", default="AMQPLAIN",
               choices=["AMQPLAIN", "PLAIN", "EXTERNAL"],
               help="SASL mechanism: AMQPLAIN or PLAIN send the user and password of "
                    "transport_url; EXTERNAL logs in as the client certificate's subject "
                    "(RabbitMQ's rabbitmq_auth_mechanism_ssl plugin)."),
    cfg.IntOpt("heartbeat_timeout_threshold", default=30, min=0,
               help="Seconds of silence after which a broker connection counts as lost "
                    "(AMQP heartbeats, sent twice as often); 0 turns heartbeats off."),
    cfg.StrOpt("kombu_failover_strategy", default="round-robin",
               choices=["round-robin", "shuffle"],
               help="Order in which the brokers of transport_url are tried: round-robin "
                    "(from the one after the last used) or shuffle (spreads a fleet)."),
]

def settings(conf: cfg.ConfigOpts) -> BrokerSettings:
    """Read and check the broker options once; ConfigError names what is wrong."""
    try:
        brokers, vhost = transport.parse(conf.transport_url)
    except transport.TransportURLError as exc:
        raise ConfigError(f"[DEFAULT] {exc}") from exc
    rabbit = _rabbit_options(conf)
    tls = _tls(rabbit) if rabbit["ssl"] else None
    login_method = rabbit["rabbit_login_method"]
    if login_method == "EXTERNAL":
        if tls is None or not tls.cert_file:
            raise ConfigError(f"[{GROUP}] rabbit_login_method = EXTERNAL logs in with a "
                              "client certificate: set ssl = true and ssl_cert_file")
        try:
            certificate_common_name(tls.cert_file)
        except ValueError as exc:
            raise ConfigError(f"[{GROUP}] ssl_cert_file: {exc}") from None
    return BrokerSettings(
        brokers=tuple(brokers), vhost=vhost, login_method=login_method, tls=tls,
        heartbeat=rabbit["heartbeat_timeout_threshold"],
        failover=rabbit["kombu_failover_strategy"])


def _rabbit_options(conf: cfg.ConfigOpts) -> dict:
    """[oslo_messaging_rabbit], with transport_url's query keys over it (typed as the
    options are); a key that is no option here is an error naming it."""
    group = conf[GROUP]
    values = {opt.dest: getattr(group, opt.dest) for opt in RABBIT_OPTS}
    query = urllib.parse.urlsplit(conf.transport_url).query
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in _NO_OP_QUERY_KEYS:
            if cfg.types.Boolean()(value) != _NO_OP_QUERY_KEYS[key]:
                raise ConfigError(f"[DEFAULT] transport_url: {key}={value}: the exchange "
                                  "and queues here are always durable")
            continue
        opt = next((o for o in RABBIT_OPTS if o.dest == key), None)
        if opt is None:
            known = ", ".join(sorted([o.dest for o in RABBIT_OPTS] + list(_NO_OP_QUERY_KEYS)))
            raise ConfigError(f"[DEFAULT] transport_url: query key {key!r} is not "
                              f"supported (supported: {known})")
        try:
            values[key] = opt.type(value)
        except ValueError as exc:
            raise ConfigError(f"[DEFAULT] transport_url: {key}={value!r}: {exc}") from None
    return values


def _tls(rabbit: dict) -> TLS:
    version = rabbit["ssl_version"].lower()
    if version not in _TLS_VERSIONS:
        raise ConfigError(f"[{GROUP}] ssl_version {rabbit['ssl_version']!r}: use TLSv1_2, "
                          "TLSv1_3 or leave it empty (older versions are not safe)")
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = rabbit[name]
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"[{GROUP}] {name} {path!r}: cannot be read")
    if rabbit["ssl_key_file"] and not rabbit["ssl_cert_file"]:
        raise ConfigError(f"[{GROUP}] ssl_key_file is set but ssl_cert_file is not")
    minimum, maximum = _TLS_VERSIONS[version]
    tls = TLS(ca_file=rabbit["ssl_ca_file"], cert_file=rabbit["ssl_cert_file"],
              key_file=rabbit["ssl_key_file"], minimum=minimum, maximum=maximum,
              verify_hostname=rabbit["ssl_enforce_hostname_verification"])
    _check_loads(tls)
    return tls


def _check_loads(tls: TLS) -> None:
    """Load the CA file and the client certificate as a connection would."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if tls.ca_file:
            context.load_verify_locations(tls.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[{GROUP}] ssl_ca_file {tls.ca_file!r}: {exc}") from None
    try:
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[{GROUP}] ssl_cert_file {tls.cert_file!r} with ssl_key_file "
                          f"{tls.key_file or tls.cert_file!r}: {exc}") from None


def certificate_common_name(path: str) -> str:
    """The common name of the subject of the PEM certificate in ``path``; ValueError if
    it has none."""
    try:
        # The standard library's certificate decoder (what ssl's tests use); public
        # alternatives need a third-party package for this one field.
        decoded = ssl._ssl._test_decode_cert(path)  # noqa: SLF001
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{path!r} is not a readable PEM certificate: {exc}") from None
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    raise ValueError(f"the certificate in {path!r} has no common name")


# -- connecting -------------------------------------------------------------------------

class Connector:
    """Opens connections for one service, in failover order: round-robin starts from
    the broker after the one last connected to, shuffle draws a new order each time.

    Each connection it opens reports RabbitMQ's ``connection.blocked`` and
    ``connection.unblocked`` to ``blocked`` (one ``BlockedState`` for every connection
    this Connector opens: a service holds one at a time per Connector), and fails a
    blocking write that waits more than ``write_timeout`` seconds for the broker to take
    any of it."""

    def __init__(self, settings: BrokerSettings, write_timeout: float = WRITE_TIMEOUT,
                 role: str = "connection"):
        """``role``: what the connection is for, as logs name it ("publishing
        connection", "dead-letter connection")."""
        self.settings = settings
        self.write_timeout = write_timeout
        self.blocked = BlockedState(role=role)
        self._next = 0

    def connect(self) -> tuple[kombu.Connection, transport.Broker]:
        """A connection to the first broker that accepts one (each tried once), and
        which broker it is. BrokerConnectError says why each one failed."""
        failures = []
        for broker in self._order():
            conn = _connection(self.settings, broker, self.write_timeout)
            try:
                conn.connect()
            except Exception as exc:  # noqa: BLE001 - mapped to one error, the cause kept
                release(conn)
                failures.append(f"{describe(self.settings, broker)}: {explain(exc)}")
                continue
            self._next = self.settings.brokers.index(broker) + 1
            self.blocked.watch(conn, describe(self.settings, broker))
            return conn, broker
        raise BrokerConnectError("; ".join(failures))

    def _order(self) -> list[transport.Broker]:
        brokers = list(self.settings.brokers)
        if self.settings.failover == "shuffle":
            random.shuffle(brokers)
            return brokers
        start = self._next % len(brokers)
        return brokers[start:] + brokers[:start]


# -- connection.blocked ---------------------------------------------------------------

# py-amqp declares connection.blocked without its argument and hands its callback a
# fixed text; RabbitMQ sends the reason ("low on memory", "low on disk") as a short
# string, read here with the method's real signature.
_BLOCKED_WITH_REASON = amqp.spec.method(amqp.spec.Connection.Blocked, "s")


class BlockedState:
    """Whether the broker has blocked a connection (RabbitMQ's ``connection.blocked``:
    a memory or disk alarm somewhere in its cluster), why, and since when; with how long
    connections were blocked in all since start, for the metrics.

    RabbitMQ blocks a connection only once it publishes during an alarm (until then it
    is "blocking" and reads on), then stops reading it entirely, so nothing written to
    it arrives, heartbeats and ``connection.close`` included, until it unblocks. A
    connection that only consumes and acks is never blocked. The alarm is cluster-wide:
    every node blocks its publishers.

    Written by the thread that owns the connection (inside its reads), read by any
    (metrics, health): each attribute read is a consistent value."""

    def __init__(self, role: str = "connection", clock: Callable[[], float] = time.monotonic):
        self.role = role
        self._clock = clock
        self.since: Optional[float] = None   # monotonic; None: not blocked
        self.reason = ""
        self.where = ""                      # the broker, as logs name it
        self.blocks = 0                      # times blocked since start
        self._ended_seconds = 0.0            # seconds blocked, blocks that ended

    @property
    def is_blocked(self) -> bool:
        return self.since is not None

    def blocked_for(self) -> float:
        since = self.since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def seconds_total(self) -> float:
        """Seconds blocked since start, the current block included."""
        return self._ended_seconds + self.blocked_for()

    def block(self, reason: str) -> None:
        if self.since is None:
            self.since = self._clock()
            self.blocks += 1
            LOG.warning("the broker %s blocked this service's %s: %s (a resource alarm; "
                        "nothing sent on it arrives until it unblocks)", self.where,
                        self.role, reason or "no reason given")
        self.reason = reason

    def unblock(self) -> None:
        if self.since is not None:
            lasted = self.blocked_for()
            self._end()
            LOG.info("the broker %s unblocked this service's %s after %.1fs", self.where,
                     self.role, lasted)

    def closed(self) -> None:
        """The connection is gone: a block ends with it."""
        if self.since is not None:
            lasted = self.blocked_for()
            self._end()
            LOG.info("this service's %s to %s closed after %.1fs blocked", self.role,
                     self.where, lasted)

    def watch(self, conn: kombu.Connection, where: str) -> None:
        """Report ``conn``'s blocked and unblocked notifications here from now on."""
        self.closed()
        self.where = where
        amqp_conn = conn.connection
        methods = dict(amqp_conn._METHODS)  # the instance's own copy of the class's map
        methods[amqp.spec.Connection.Blocked] = _BLOCKED_WITH_REASON
        amqp_conn._METHODS = methods
        amqp_conn._callbacks[amqp.spec.Connection.Blocked] = self._on_blocked
        amqp_conn._callbacks[amqp.spec.Connection.Unblocked] = self.unblock
        conn._lifecycle_blocked = self  # release() ends the block with the connection

    def _on_blocked(self, reason: str = "") -> None:
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        self.block(reason)

    def _end(self) -> None:
        self._ended_seconds += self.blocked_for()
        self.since = None
        self.reason = ""


def check(what: str, down_since: Optional[float], blocked: BlockedState, now: float,
          consequence: str) -> health.Check:
    """The health of a service's broker connection: ok while connected and not blocked;
    degraded while unreachable or blocked, however long (the outbox or the queue keeps
    what waits, and a restart would not bring the broker back: never failing).
    ``consequence``: what waits meanwhile, in the operator's words."""
    if down_since is not None:
        return health.Check("broker", health.Status.DEGRADED,
                            f"{what}: unreachable for {max(0.0, now - down_since):.1f}s; "
                            f"{consequence}")
    if blocked.is_blocked:
        return health.Check("broker", health.Status.DEGRADED,
                            f"{what}: blocked by {blocked.where} for "
                            f"{blocked.blocked_for():.1f}s: {blocked.reason or 'no reason given'}"
                            f"; {consequence}")
    return health.Check("broker", health.Status.OK, f"{what}: reachable")


def _connection(settings: BrokerSettings, broker: transport.Broker,
                write_timeout: float = WRITE_TIMEOUT) -> kombu.Connection:
    user, password = broker.username or "guest", broker.password or "guest"
    if settings.login_method == "EXTERNAL":
        user, password = "", ""
    return kombu.Connection(
        hostname=broker.hostname, port=broker.port, userid=user, password=password,
        virtual_host=settings.vhost or "/", login_method=settings.login_method,
        ssl=settings.tls.options(broker.hostname) if settings.tls else False,
        heartbeat=settings.heartbeat, connect_timeout=settings.connect_timeout,
        # kombu hands transport_options to py-amqp's Connection: write_timeout is its
        # SO_SNDTIMEO, set before the handshake. (No socket timeout: with one, Python
        # waits for the socket before a MSG_DONTWAIT read or write; see amqp_frames.)
        transport="pyamqp",
        transport_options={"max_retries": 0, "write_timeout": write_timeout})


def describe(settings: BrokerSettings, broker: transport.Broker) -> str:
    """The broker as logs name it, e.g. ``amqps://lifecycle-c1@mq1:5671/`` (no password)."""
    scheme = "amqps" if settings.tls else "amqp"
    user = "(certificate)" if settings.login_method == "EXTERNAL" else broker.username or "guest"
    host = f"[{broker.hostname}]" if ":" in broker.hostname else broker.hostname
    return f"{scheme}://{user}@{host}:{broker.port}/{settings.vhost}"


def explain(exc: BaseException) -> str:
    """Why a connection attempt failed, in the operator's terms."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate was refused ({exc.verify_message}); check "
                "ssl_ca_file and that transport_url names the broker as its certificate does")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, amqp.exceptions.AccessRefused):
        return f"login refused: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


CLOSE_TIMEOUT = 2.0  # seconds a closing connection waits for the broker's close-ok


def release(conn: kombu.Connection, handshake: bool = True) -> None:
    """Close a connection being discarded, whatever state it is in: the AMQP close
    handshake if the broker answers within CLOSE_TIMEOUT, else the socket alone. (A
    broker that takes what it is sent and answers nothing, a cluster node without its
    majority, say, would keep py-amqp waiting for its close-ok for ever.) No handshake
    is tried on a blocked connection (the broker reads nothing of it, ``connection.close``
    included) or with ``handshake`` False (a frame left half written, say)."""
    blocked: Optional[BlockedState] = getattr(conn, "_lifecycle_blocked", None)
    if blocked is not None and blocked.is_blocked:
        handshake = False
    try:
        sock = conn.connection.transport.sock if conn.connected else None
        if sock is not None:
            sock.settimeout(CLOSE_TIMEOUT)
    except Exception:  # noqa: BLE001 - not connected: nothing to bound
        pass
    try:
        if not handshake:
            conn.collect()  # the socket closed, no AMQP close
        else:
            conn.release()
    except Exception:  # noqa: BLE001 - the connection is being discarded
        LOG.debug("closing the broker connection failed; dropping it", exc_info=True)
        try:
            conn.collect()
        except Exception:  # noqa: BLE001
            LOG.debug("dropping the broker connection failed", exc_info=True)
    if blocked is not None:
        blocked.closed()
