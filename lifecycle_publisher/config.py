"""Every option of the agent, declared once, exposed to oslo-config-generator."""

from __future__ import annotations

from oslo_config import cfg

from lifecycle_common import broker
from lifecycle_common import config as common
from lifecycle_common.wire import limits

AGENT_DEFAULT_OPTS = [
    cfg.StrOpt("state_path", default="/var/lib/lifecycle-agent",
               help="Directory for the agent's durable outbox (outbox.sqlite) and other "
                    "local files. It must survive restarts: it holds unpublished events "
                    "and the sequence counter."),
]

LIBVIRT_OPTS = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt URI whose domains the agent watches, e.g. qemu:///system, "
                    "test+unix:///default."),
    cfg.FloatOpt("reconnect_interval_max", default=30.0, min=0.1,
                 help="Upper bound, in seconds, of the exponential back-off between "
                      "attempts to open the libvirt connection."),
]

AGENT_OPTS = [
    cfg.FloatOpt("heartbeat_interval", default=10.0, min=0.1,
                 help="Seconds between heartbeats. The consumer marks the host down when "
                      "heartbeats stop for its [consumer] host_down_after."),
    cfg.FloatOpt("inventory_interval", default=600.0, min=0,
                 help="Seconds between full inventories of the host's domains, besides the "
                      "one at start. 0 disables the periodic inventory."),
    cfg.FloatOpt("stopped_event_delay", default=0.0, min=0, max=60,
                 help="Seconds to hold a STOPPED event back, dropping it if any later "
                      "event for the same domain arrives first. A guest that reboots "
                      "emits STOPPED then STARTED; with a delay of a few seconds the "
                      "control plane never sees it stopped (nova uses 15 s). The price: "
                      "every real stop is seen that much later, and a held event is lost "
                      "if the agent crashes meanwhile (the next inventory corrects it). "
                      "0, the default, publishes a stop at once."),
    cfg.FloatOpt("fault_coalesce_interval", default=1.0, min=0,
                 help="Seconds over which repeated faults of one instance are coalesced "
                      "into one notification: per instance and fault (an I/O error per "
                      "disk and reason, a watchdog per action, ...) the first occurrence "
                      "is published at once, then at most one notification per interval "
                      "carrying how many occurred (count) and when the first did. It "
                      "bounds what a storm (a disk failing every request: thousands of "
                      "I/O errors a second) puts in the outbox, on the broker and in the "
                      "database. Guest agent connects and disconnects are never "
                      "coalesced. 0 publishes every occurrence."),
    cfg.IntOpt("publish_window", default=1024, min=1, max=65535,
               help="Publisher confirms: how many messages may wait for the broker's "
                    "confirmation at once. Larger windows raise throughput; 1 waits for "
                    "each confirm before sending the next message."),
    cfg.StrOpt("outbox_synchronous", default="NORMAL", choices=["NORMAL", "FULL"],
               help="SQLite synchronous mode of the outbox (WAL). NORMAL survives a crash "
                    "of the agent but may lose the last events on a power loss; FULL "
                    "survives both at the price of an fsync per batch of events."),
    cfg.FloatOpt("broker_retry_interval_max", default=30.0, min=0.1,
                 help="Upper bound, in seconds, of the exponential back-off between "
                      "attempts to reach the broker. Events wait in the outbox meanwhile."),
    cfg.FloatOpt("confirm_timeout", default=30.0, min=1.0,
                 help="Seconds the agent waits for the broker to confirm what it sent "
                      "before it gives up on that connection and publishes elsewhere (the "
                      "next broker of transport_url). A node of a cluster that lost its "
                      "majority takes messages but cannot confirm them: a quorum queue "
                      "confirms once a majority holds the message. Nothing is lost: what "
                      "was not confirmed stays in the outbox and is sent again."),
    cfg.StrOpt("broker_user", default="",
               help="The broker user this agent logs in as, set as the AMQP user_id of "
                    "every message it publishes (RabbitMQ refuses a message whose user_id "
                    "is not the login, so a consumer with publisher_identity = host_user "
                    "can trust it). Empty: the user of transport_url, or with "
                    "rabbit_login_method = EXTERNAL the common name of ssl_cert_file's "
                    "subject (RabbitMQ's ssl_cert_login_from = common_name); set it where "
                    "the broker names certificate users otherwise."),
    cfg.FloatOpt("shutdown_timeout", default=10.0, min=0,
                 help="On SIGTERM, seconds to wait for in-flight messages to be confirmed "
                      "before exiting; what is left stays in the outbox for the next start."),
]

METRICS_OPTS = common.metrics_opts(default_port=9178)

HEALTH_OPTS = [
    cfg.FloatOpt("libvirt_failing_after", default=30.0, min=0,
                 deprecated_for_removal=True,
                 deprecated_reason="A lost libvirt connection makes the agent's health "
                                   "degraded however long it lasts: the agent reconnects "
                                   "by itself, and a restart would not bring libvirtd back.",
                 help="No effect; kept so that configuration files that set it still "
                      "load. The libvirt check is degraded, never failing, while the "
                      "connection is lost."),
    cfg.FloatOpt("broker_failing_after", default=120.0, min=0,
                 deprecated_for_removal=True,
                 deprecated_reason="A broker that is unreachable, or that blocks the "
                                   "agent's connection (a resource alarm), makes the "
                                   "agent's health degraded however long it lasts: the "
                                   "outbox keeps the events and a restart would not bring "
                                   "the broker back.",
                 help="No effect; kept so that configuration files that set it still "
                      "load. The broker check is degraded, never failing, while the "
                      "broker is unreachable or blocks the connection."),
    cfg.FloatOpt("outbox_age_degraded_after", default=10.0, min=0,
                 help="Seconds the oldest outbox row may wait to be confirmed before the "
                      "agent's health is degraded."),
    cfg.FloatOpt("outbox_age_failing_after", default=300.0, min=0,
                 help="Seconds the oldest outbox row may wait to be confirmed, while the "
                      "agent holds a broker connection that is not blocked, before the "
                      "agent's health is failing (the publisher is stuck: a restart "
                      "helps). While the broker is away or blocks the agent, an old row "
                      "only makes it degraded: the outbox is doing its job."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    common.register_common_opts(conf)
    conf.register_opts(AGENT_DEFAULT_OPTS)
    conf.register_opts(LIBVIRT_OPTS, group="libvirt")
    conf.register_opts(AGENT_OPTS, group="agent")
    conf.register_opts(METRICS_OPTS, group="metrics")
    conf.register_opts(HEALTH_OPTS, group="health")


def list_opts():
    return [
        ("DEFAULT", common.DEFAULT_OPTS + AGENT_DEFAULT_OPTS),
        ("libvirt", LIBVIRT_OPTS),
        ("agent", AGENT_OPTS),
        ("metrics", METRICS_OPTS),
        ("health", HEALTH_OPTS),
        ("oslo_messaging_notifications", common.NOTIFICATION_OPTS),
        (broker.GROUP, broker.RABBIT_OPTS),
    ]


def load(argv: list[str] | None) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    return common.load(conf, argv, "lifecycle-agent", list_opts(), validators=(_check_host,))


def in_code(defaults: dict, **groups: dict) -> cfg.ConfigOpts:
    """A configuration built in code, reading no files: ``[DEFAULT]`` values from
    ``defaults``, the others per group (``libvirt={...}``, ``agent={...}``). For running
    the agent embedded: the tests and the benchmarks do. The metrics endpoint is off
    unless ``metrics={"bind_port": ...}`` says otherwise (agents share the process)."""
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("bind_port", 0, group="metrics")
    for name, value in defaults.items():
        conf.set_override(name, value)
    for group, values in groups.items():
        for name, value in values.items():
            conf.set_override(name, value, group=group)
    return conf


def _check_host(conf: cfg.ConfigOpts) -> None:
    problem = limits.host_problem(conf.host)
    if problem is not None:
        raise common.ConfigError(f"[DEFAULT] host {conf.host!r} {problem}")
