"""Every option of the consumer and of lifecycle-manage, declared once."""

from __future__ import annotations

from oslo_config import cfg

from lifecycle_common import config as common
from consumer import admission

DATABASE_OPTS = [
    cfg.StrOpt("connection", default="sqlite:////var/lib/lifecycle-consumer/lifecycle.sqlite",
               secret=True,
               help="SQLAlchemy URL of the instance database: sqlite:///path, "
                    "postgresql+psycopg2://user@host/db or mysql+pymysql://user@host/db."),
]

CONSUMER_OPTS = [
    cfg.StrOpt("queue_name", default="lifecycle-consumer",
               help="Durable queue the consumers share. Its dead-letter exchange and "
                    "queue are '<queue_name>.dlx' and '<queue_name>.dlq'."),
    cfg.StrOpt("queue_type", default="classic", choices=["classic", "quorum"],
               help="RabbitMQ queue type of the queue and its dead-letter queue. Quorum "
                    "queues replicate across a cluster. Changing it on an existing queue "
                    "needs the queue deleted first."),
    cfg.IntOpt("batch_size", default=500, min=1, max=10000,
               help="Most messages applied in one database transaction."),
    cfg.FloatOpt("batch_linger", default=0.0, min=0, max=1,
                 help="Seconds to wait, after a batch's first message, for more before "
                      "applying a batch that is not full. 0 applies at once whatever has "
                      "arrived: messages that arrive during a transaction make the next "
                      "batch, so batches grow with the load by themselves. A few "
                      "milliseconds trade latency for fewer transactions under a steady "
                      "trickle."),
    cfg.FloatOpt("host_down_after", default=30.0, min=0.1,
                 help="Seconds without a heartbeat after which a host is marked down; "
                      "set it to a few times the agents' [agent] heartbeat_interval."),
    cfg.FloatOpt("journal_retention", default=7 * 86400.0, min=60,
                 help="Seconds to keep the journal of applied events. It makes "
                      "redeliveries count as duplicates; older redeliveries still cannot "
                      "move an instance backwards."),
    cfg.FloatOpt("retry_interval_max", default=30.0, min=0.1,
                 help="Upper bound, in seconds, of the back-off between attempts to reach "
                      "the broker or the database."),
    cfg.StrOpt("publisher_identity", default="any", choices=[
        ("any", "accept every publisher: any broker user can speak for any host (the "
                "consumer warns at start)"),
        ("host_user", "accept an event, inventory or heartbeat about host H only if its "
                      "AMQP user_id (which RabbitMQ checks against the publisher's login) "
                      "is publisher_user_template formatted with H, or is listed in "
                      "trusted_publishers")],
               help="Which broker users may speak for which hosts. A message refused is "
                    "dead-lettered with the reason and changes nothing."),
    cfg.StrOpt("publisher_user_template", default="{host}",
               help="With publisher_identity = host_user: the broker user of host H, "
                    "'{host}' standing for H (e.g. 'lifecycle-{host}')."),
    cfg.ListOpt("trusted_publishers", default=[],
                help="With publisher_identity = host_user: broker users that may speak for "
                     "every host (e.g. a tool that replays dead letters)."),
    cfg.FloatOpt("max_clock_skew", default=300.0, min=1.0,
                 help="Seconds by which an agent's epoch (its start time) or an event's "
                      "occurred_at may lie ahead of the consumer's clock. A message further "
                      "ahead is dead-lettered: applied, it would make the host's later real "
                      "events look older and silence it. Keep the hosts' clocks within this "
                      "of the consumer's (NTP)."),
]

METRICS_OPTS = common.metrics_opts(default_port=9179)

HEALTH_OPTS = [
    cfg.FloatOpt("broker_failing_after", default=30.0, min=0,
                 help="Seconds without a broker connection (health degraded) before the "
                      "consumer's health is failing: /healthz answers 503 and systemd's "
                      "watchdog is no longer fed."),
    cfg.FloatOpt("database_failing_after", default=30.0, min=0,
                 help="Seconds the database may be unreachable (health degraded; batches "
                      "are held) before the consumer's health is failing."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    common.register_common_opts(conf)
    conf.register_opts(DATABASE_OPTS, group="database")
    conf.register_opts(CONSUMER_OPTS, group="consumer")
    conf.register_opts(METRICS_OPTS, group="metrics")
    conf.register_opts(HEALTH_OPTS, group="health")


def list_opts():
    return [
        ("DEFAULT", common.DEFAULT_OPTS),
        ("database", DATABASE_OPTS),
        ("consumer", CONSUMER_OPTS),
        ("metrics", METRICS_OPTS),
        ("health", HEALTH_OPTS),
        ("oslo_messaging_notifications", common.NOTIFICATION_OPTS),
        ("oslo_messaging_rabbit", common.RABBIT_OPTS),
    ]


def make_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    return conf


def load(argv: list[str] | None, prog: str = "lifecycle-consumer",
         conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    conf = conf or make_conf()
    return common.load(conf, argv, prog, list_opts(), validators=(_check_template,))


def admission_policy(conf: cfg.ConfigOpts) -> admission.Policy:
    """The [consumer] options that say which messages are believed."""
    c = conf.consumer
    return admission.Policy(
        identity=admission.PublisherIdentity(c.publisher_identity),
        user_template=c.publisher_user_template, trusted=frozenset(c.trusted_publishers),
        max_clock_skew=c.max_clock_skew)


def _check_template(conf: cfg.ConfigOpts) -> None:
    template = conf.consumer.publisher_user_template
    try:
        user = template.format(host="compute-1")
    except (KeyError, IndexError, ValueError) as exc:
        raise common.ConfigError(
            f"[consumer] publisher_user_template {template!r}: only {{host}} may be "
            f"substituted ({type(exc).__name__}: {exc})") from None
    if user == template.format(host="compute-2"):
        raise common.ConfigError(
            f"[consumer] publisher_user_template {template!r} must contain {{host}}: "
            "otherwise every host has the same user")
