"""Every option of the consumer and of lifecycle-manage, declared once."""

from __future__ import annotations

from oslo_config import cfg

from lifecycle_common import broker
from lifecycle_common import config as common
from consumer import admission
from consumer.db import engine as db_engine

DATABASE_OPTS = [
    cfg.StrOpt("connection", default="sqlite:////var/lib/lifecycle-consumer/lifecycle.sqlite",
               secret=True,
               help="SQLAlchemy URL of the instance database: sqlite:///path, "
                    "postgresql+psycopg2://user@host/db or mysql+pymysql://user@host/db. "
                    "PostgreSQL with a standby to fail over to: "
                    "postgresql+psycopg2://user@/db?host=db1:5432&host=db2:5432"
                    "&target_session_attrs=read-write (libpq tries the hosts in turn and "
                    "keeps the first that accepts writes; after a failover, or an answer "
                    "that the server is read-only, the consumer replaces its connections "
                    "through the same list). Make the standby synchronous "
                    "(synchronous_standby_names on the primary), so that a commit the "
                    "consumer acknowledged is on it. A connection parameter in the URL's "
                    "query (connect_timeout=..., options=...) wins over the timeouts below."),
    cfg.IntOpt("connect_timeout", default=5, min=1,
               help="Seconds to wait for a connection to be made, per host (PostgreSQL: "
                    "libpq's connect_timeout, which counts 1 as 2; MariaDB/MySQL: "
                    "pymysql's, handshake included)."),
    cfg.FloatOpt("statement_timeout", default=15.0, min=0,
                 help="Seconds one statement may run before the server cancels it "
                      "(PostgreSQL: statement_timeout, and idle_in_transaction_session_"
                      "timeout to end a session that stopped mid-transaction; MariaDB: "
                      "max_statement_time and idle_transaction_timeout; MySQL: "
                      "max_execution_time, SELECT only). MariaDB/MySQL: the client also "
                      "gives up reading or writing a connection 5 s after it (pymysql's "
                      "read_timeout and write_timeout). The batch is then held and tried "
                      "again, never refused. 0: no bound. SQLite has no statement timeout."),
    cfg.FloatOpt("lock_timeout", default=5.0, min=0.1,
                 help="Seconds a statement may wait for a lock another session holds "
                      "(PostgreSQL: lock_timeout; MariaDB/MySQL: innodb_lock_wait_timeout "
                      "and lock_wait_timeout, rounded up to whole seconds; SQLite: the busy "
                      "timeout). A lock held that long is a stuck holder, not a race "
                      "between consumers (those end in milliseconds): the batch is held "
                      "and tried again with back-off."),
    cfg.IntOpt("keepalive_idle", default=10, min=1,
               help="Seconds a connection may be silent before TCP keepalive probes start "
                    "(PostgreSQL: libpq's keepalives_idle; MariaDB/MySQL: the socket's "
                    "TCP_KEEPIDLE). With keepalive_interval and keepalive_count, this "
                    "bounds how long a peer that vanished (powered off, network cut) goes "
                    "unnoticed on an idle connection."),
    cfg.IntOpt("keepalive_interval", default=5, min=1,
               help="Seconds between TCP keepalive probes (PostgreSQL, MariaDB/MySQL)."),
    cfg.IntOpt("keepalive_count", default=3, min=1,
               help="Unanswered TCP keepalive probes after which the connection is "
                    "dropped (PostgreSQL, MariaDB/MySQL)."),
    cfg.FloatOpt("tcp_user_timeout", default=20.0, min=0,
                 help="Seconds data sent may stay unacknowledged by the peer before the "
                      "connection is dropped (TCP_USER_TIMEOUT; PostgreSQL: libpq's "
                      "tcp_user_timeout; MariaDB/MySQL: on the socket): a peer that "
                      "vanished while the consumer was sending. 0: the system's default."),
    cfg.FloatOpt("retry_interval_max", default=2.0, min=0.1,
                 help="Upper bound, in seconds, of the back-off between attempts to apply "
                      "a batch held while the database is unavailable (and at most "
                      "[consumer] retry_interval_max). An attempt while the database is "
                      "away costs a connection attempt; kept short so that a held batch "
                      "goes through within about this long of the database's return (a "
                      "standby's promotion)."),
]

IDENTITY_OPTS = [
    cfg.StrOpt("publisher_identity", default="any", choices=[
        ("any", "accept every publisher: any broker user can speak for any host (the "
                "service warns at start)"),
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
                      "the broker or the database (the database's is also bounded by "
                      "[database] retry_interval_max)."),
    cfg.FloatOpt("max_clock_skew", default=300.0, min=1.0,
                 help="Seconds by which a host's clock may differ from the consumer's "
                      "before the consumer warns: it logs the host when its offset (the "
                      "moment its last heartbeat says, less when it arrived) goes beyond "
                      "this, and counts such hosts in the metric "
                      "lifecycle_consumer_hosts_clock_skewed. Clocks decide nothing: a "
                      "host whose clock is wrong is applied like any other (liveness is "
                      "when its heartbeats arrive here, order is its own sequence), but "
                      "its occurred_at and the latency measured from it are off by as "
                      "much."),
] + IDENTITY_OPTS

METRICS_OPTS = common.metrics_opts(default_port=9179)

HEALTH_OPTS = [
    cfg.FloatOpt("broker_failing_after", default=30.0, min=0,
                 deprecated_for_removal=True,
                 deprecated_reason="A broker that is unreachable, or that blocks the "
                                   "consumer's dead-letter connection (a resource alarm), "
                                   "makes the consumer's health degraded however long it "
                                   "lasts: the queue keeps the messages and a restart "
                                   "would not bring the broker back.",
                 help="No effect; kept so that configuration files that set it still "
                      "load. The broker check is degraded, never failing, while the "
                      "broker is unreachable or blocks a connection."),
    cfg.FloatOpt("database_failing_after", default=60.0, min=0,
                 help="Seconds one call to the database (an attempt at a batch, a pass of "
                      "host liveness) may go without returning before the consumer's "
                      "health is failing: then the consume loop (or the liveness thread) "
                      "has stopped turning despite the [database] timeouts, which a "
                      "restart fixes. Keep it above what one attempt can take with those "
                      "timeouts. A database that is unreachable, or stalls into its "
                      "timeouts, makes the health degraded however long it lasts "
                      "(batches are held): a restart would not bring it back."),
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
        (broker.GROUP, broker.RABBIT_OPTS),
    ]


def make_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    return conf


def load(argv: list[str] | None, prog: str = "lifecycle-consumer",
         conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    conf = conf or make_conf()
    return common.load(conf, argv, prog, list_opts(), validators=(check_template,))


def database_timeouts(conf: cfg.ConfigOpts) -> db_engine.Timeouts:
    """The [database] options that bound every wait for the database."""
    d = conf.database
    return db_engine.Timeouts(
        connect=d.connect_timeout, statement=d.statement_timeout, lock=d.lock_timeout,
        keepalive_idle=d.keepalive_idle, keepalive_interval=d.keepalive_interval,
        keepalive_count=d.keepalive_count, tcp_user_timeout=d.tcp_user_timeout)


def admission_policy(conf: cfg.ConfigOpts, group: str = "consumer") -> admission.Policy:
    """The options (IDENTITY_OPTS, in ``group``) that say which messages are believed."""
    c = conf[group]
    return admission.Policy(
        identity=admission.PublisherIdentity(c.publisher_identity),
        user_template=c.publisher_user_template, trusted=frozenset(c.trusted_publishers))


def check_template(conf: cfg.ConfigOpts, group: str = "consumer") -> None:
    """IDENTITY_OPTS' publisher_user_template, in ``group``, can be formatted."""
    template = conf[group].publisher_user_template
    try:
        user = template.format(host="compute-1")
    except (KeyError, IndexError, ValueError) as exc:
        raise common.ConfigError(
            f"[{group}] publisher_user_template {template!r}: only {{host}} may be "
            f"substituted ({type(exc).__name__}: {exc})") from None
    if user == template.format(host="compute-2"):
        raise common.ConfigError(
            f"[{group}] publisher_user_template {template!r} must contain {{host}}: "
            "otherwise every host has the same user")
