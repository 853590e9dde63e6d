"""``lifecycle-consumer``: the controller-side service's entry point."""

from __future__ import annotations

import sys

from sqlalchemy import exc as sa_exc

from lifecycle_common import config as common
from lifecycle_common import broker, metrics_http
from lifecycle_common.wire import schemas
from consumer import config
from consumer.amqp_queue import BatchQueue
from consumer.db import engine as db_engine
from consumer.db import migrate
from consumer.service import ConsumerService
from consumer.store import Store
from consumer.topology import Topology


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-consumer", config.load,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    connector = broker.Connector(broker.settings(conf))  # checked when the options loaded
    engine = db_engine.create(conf.database.connection, config.database_timeouts(conf))
    try:
        current, head = migrate.current(engine), migrate.head()
    except sa_exc.DBAPIError as exc:
        print(f"lifecycle-consumer: cannot read the database "
              f"{engine.url.render_as_string(hide_password=True)}: {exc.orig}", file=sys.stderr)
        return 1
    if current != head:
        print(f"lifecycle-consumer: the database schema is at {current}, not {head}: "
              "run 'lifecycle-manage db sync'", file=sys.stderr)
        return 2
    schemas.prepare()
    topology = Topology(
        exchange=conf.control_exchange, queue=conf.consumer.queue_name,
        routing_key=f"{conf.oslo_messaging_notifications.topics[0]}.info",
        queue_type=conf.consumer.queue_type)
    service = ConsumerService(
        BatchQueue(connector, topology, conf.consumer.batch_size, conf.consumer.batch_linger),
        Store(engine), conf.consumer.host_down_after, conf.consumer.retry_interval_max,
        conf.consumer.journal_retention, config.admission_policy(conf),
        broker_failing_after=conf.health.broker_failing_after,
        database_failing_after=conf.health.database_failing_after,
        database_retry_max=conf.database.retry_interval_max,
        max_clock_skew=conf.consumer.max_clock_skew)
    if conf.metrics.bind_port:
        try:
            service.serve_metrics(conf.metrics.bind_host, conf.metrics.bind_port)
        except metrics_http.BindError as exc:
            return common.bind_error("lifecycle-consumer", conf, exc)
    return common.serve(service)


if __name__ == "__main__":
    sys.exit(main())
