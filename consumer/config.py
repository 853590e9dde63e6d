"""Every option of the consumer and of lifecycle-manage, declared once."""

from __future__ import annotations

from oslo_config import cfg

from lifecycle_common import config as common

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
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    common.register_common_opts(conf)
    conf.register_opts(DATABASE_OPTS, group="database")
    conf.register_opts(CONSUMER_OPTS, group="consumer")


def list_opts():
    return [
        ("DEFAULT", common.DEFAULT_OPTS),
        ("database", DATABASE_OPTS),
        ("consumer", CONSUMER_OPTS),
        ("oslo_messaging_notifications", common.NOTIFICATION_OPTS),
    ]


def make_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    register_opts(conf)
    return conf


def load(argv: list[str] | None, prog: str = "lifecycle-consumer",
         conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    conf = conf or make_conf()
    return common.load(conf, argv, prog, list_opts())
