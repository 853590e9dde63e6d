"""Every option of ``lifecycle-webhook``, declared once, and checked at start: a bad
value stops the service with a message naming the option."""

from __future__ import annotations

import fnmatch
import os
import re
import ssl
import urllib.parse

from oslo_config import cfg

from lifecycle_common import broker
from lifecycle_common import config as common
from lifecycle_common.wire import vocabulary
from consumer import config as consumer_config
from consumer.topology import Topology

GROUP = "webhook"
# What a URL may hold (RFC 3986: unreserved, reserved and '%' of percent-encoding).
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")

WEBHOOK_OPTS = [
    cfg.StrOpt("url", sample_default="https://alerts.example.org/hooks/libvirt",
               help="The endpoint every notification is POSTed to (http:// or "
                    "https://; its path and query are kept). Required. One process "
                    "serves one endpoint: run one process (lifecycle-webhook@NAME) per "
                    "endpoint, each with its own queue_name."),
    cfg.StrOpt("queue_name", default="lifecycle-webhook",
               help="Durable queue of this endpoint, bound to [DEFAULT] control_exchange "
                    "with the first topic's '.info' key; its dead letters go to "
                    "'<queue_name>.dlq' (lifecycle-manage dlq --queue <queue_name>). "
                    "Give each endpoint a queue of its own: two services on one queue "
                    "share its messages. The queue is declared single-active-consumer: "
                    "a second process on the same queue stands by and takes over when "
                    "the first stops, so per-instance order holds."),
    cfg.StrOpt("queue_type", default="classic", choices=["classic", "quorum"],
               help="RabbitMQ queue type of the queue and its dead-letter queue. Quorum "
                    "queues replicate across a cluster. Changing it on an existing queue "
                    "needs the queue deleted first."),
    cfg.StrOpt("mode", default="structured", choices=[
        ("structured", "the whole CloudEvent as the JSON body, Content-Type "
                       "application/cloudevents+json"),
        ("binary", "the attributes as ce-* headers, the payload as the JSON body")],
               help="CloudEvents HTTP binding mode. The signature covers the body (and the "
                    "id): in structured mode every attribute, in binary mode the payload "
                    "only, not the ce-* headers; a receiver of binary mode on a path it "
                    "does not trust takes the instance and the event from the payload."),
    cfg.StrOpt("secret_file", sample_default="/etc/lifecycle/webhook-NAME.secret",
               help="File of the signing secret(s), one 'whsec_<base64>' per line as "
                    "the Standard Webhooks specification writes them ('#' begins a "
                    "comment). Required. During a rotation, list both: every request "
                    "is signed with each, and a receiver accepts either. The file is "
                    "read again when it changes. Keep it readable by the service only."),
    cfg.ListOpt("event_types", default=["instance.*"],
                help="Event types delivered, as shell-style globs (instance.*, "
                     "instance.watchdog, host.*); the others are acknowledged and "
                     "dropped from this endpoint's queue."),
    cfg.FloatOpt("retry_for", default=86400.0, min=0,
                 help="Seconds an event is retried (408, 429, 5xx, timeouts, refused "
                      "connections, TLS failures) from its first attempt by this "
                      "process before it is dead-lettered with the endpoint's last "
                      "answer. 0: never retried. The events of the same instance after "
                      "it wait meanwhile; other instances' go on."),
    cfg.FloatOpt("retry_interval_max", default=300.0, min=1,
                 help="Longest wait between two attempts of one event (exponential "
                      "back-off from 1 s with jitter), unless the endpoint's Retry-After "
                      "asks for longer."),
    cfg.IntOpt("max_in_flight", default=16, min=1, max=1024,
               help="Requests to the endpoint at once, at most (each on a persistent "
                    "connection of its own, all from one I/O thread): events of "
                    "different instances; those of one instance go one at a time."),
    cfg.FloatOpt("request_timeout", default=10.0, min=0.1,
                 help="Seconds to connect and to wait for each part of the answer; a "
                      "request that times out is retried."),
    cfg.StrOpt("ca_file",
               help="CA certificates (PEM) that an https endpoint's certificate must "
                    "chain to; the system's CAs when unset. The endpoint's name is "
                    "always checked against its certificate."),
    cfg.IntOpt("prefetch", default=1000, min=1, max=65535,
               help="Messages taken from the queue and not yet delivered, at most (the "
                    "broker's prefetch). The rest wait on the queue. A few instances "
                    "whose events wait to be retried hold their events here; once this "
                    "many are held, nothing more is taken until some are settled."),
] + consumer_config.IDENTITY_OPTS

METRICS_OPTS = common.metrics_opts(default_port=9180)


def register_opts(conf: cfg.ConfigOpts) -> None:
    common.register_common_opts(conf)
    conf.register_opts(WEBHOOK_OPTS, group=GROUP)
    conf.register_opts(METRICS_OPTS, group="metrics")


def list_opts():
    return [
        ("DEFAULT", common.DEFAULT_OPTS),
        (GROUP, WEBHOOK_OPTS),
        ("metrics", METRICS_OPTS),
        ("oslo_messaging_notifications", common.NOTIFICATION_OPTS),
        (broker.GROUP, broker.RABBIT_OPTS),
    ]


def make_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    return conf


def load(argv: list[str] | None, prog: str = "lifecycle-webhook",
         conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    conf = conf or make_conf()
    return common.load(conf, argv, prog, list_opts(),
                       validators=(_check_url, _check_secret_file, _check_ca_file,
                                   _check_event_types, _check_template))


def _check_url(conf: cfg.ConfigOpts) -> None:
    url = conf.webhook.url
    if not url:
        raise common.ConfigError("[webhook] url is required: the endpoint to deliver to")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise common.ConfigError(f"[webhook] url {url!r}: not an http:// or https:// URL "
                                 "with a host")
    if not _URL_CHARACTERS.fullmatch(url):
        raise common.ConfigError(
            f"[webhook] url {url!r}: only the characters of RFC 3986 (write others "
            "percent-encoded, and a name that is not ASCII in its xn-- form)")
    if parts.fragment or "#" in url:
        raise common.ConfigError(f"[webhook] url {url!r}: a fragment is never sent")
    try:
        port = parts.port
    except ValueError as exc:
        raise common.ConfigError(f"[webhook] url {url!r}: {exc}") from None
    if port == 0:
        raise common.ConfigError(f"[webhook] url {url!r}: port 0")
    if parts.username or parts.password:
        raise common.ConfigError("[webhook] url: credentials in the URL are not sent; the "
                                 "requests are signed with [webhook] secret_file")


def _check_secret_file(conf: cfg.ConfigOpts) -> None:
    from lifecycle_webhook import signing  # (its checks, not repeated here)
    path = conf.webhook.secret_file
    if not path:
        raise common.ConfigError("[webhook] secret_file is required: the requests are "
                                 "signed (write one line 'whsec_' + base64 of 24 to 64 "
                                 "random bytes)")
    try:
        with open(path, encoding="utf-8") as f:
            signing.parse_secrets(f.read())
    except OSError as exc:
        raise common.ConfigError(f"[webhook] secret_file {path}: {exc.strerror}") from None
    except (signing.SecretError, UnicodeDecodeError) as exc:
        raise common.ConfigError(f"[webhook] secret_file {path}: {exc}") from None


def _check_ca_file(conf: cfg.ConfigOpts) -> None:
    path = conf.webhook.ca_file
    if not path:
        return
    if not os.access(path, os.R_OK):
        raise common.ConfigError(f"[webhook] ca_file {path}: not readable")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise common.ConfigError(f"[webhook] ca_file {path}: not PEM CA certificates "
                                 f"({exc})") from None


# Every event type the agents publish: a glob that matches none is a typo, which would
# otherwise drop every event it was meant to deliver.
KNOWN_EVENT_TYPES = (vocabulary.LIFECYCLE_EVENT_TYPES | vocabulary.FAULT_EVENT_TYPES
                     | {vocabulary.INVENTORY, vocabulary.HEARTBEAT})


def _check_event_types(conf: cfg.ConfigOpts) -> None:
    globs = [g.strip() for g in conf.webhook.event_types]
    if not globs or not all(globs):
        raise common.ConfigError("[webhook] event_types must name at least one event "
                                 "type or glob (instance.* by default)")
    for glob in globs:
        if not any(fnmatch.fnmatchcase(t, glob) for t in KNOWN_EVENT_TYPES):
            raise common.ConfigError(
                f"[webhook] event_types {glob!r} matches no event type (they are "
                f"{', '.join(sorted(KNOWN_EVENT_TYPES))})")


def _check_template(conf: cfg.ConfigOpts) -> None:
    consumer_config.check_template(conf, GROUP)


def topology(exchange: str, queue: str, routing_key: str,
             queue_type: str = "classic") -> Topology:
    """The webhook's queue: single-active-consumer (a second process stands by, so an
    instance's events keep their order), lazy when classic (a backlog on disk)."""
    return Topology(exchange=exchange, queue=queue, routing_key=routing_key,
                    queue_type=queue_type, single_active_consumer=True, lazy=True)


def event_filter(globs: list[str]):
    """A function of an event type saying whether it is delivered (memoised: a few
    dozen event types)."""
    patterns = [g.strip() for g in globs]
    known: dict[str, bool] = {}

    def wanted(event_type: str) -> bool:
        answer = known.get(event_type)
        if answer is None:
            answer = any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
            if len(known) < 4096:
                known[event_type] = answer
        return answer
    return wanted
