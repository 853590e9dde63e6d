"""``lifecycle-webhook``: the entry point of the service that delivers the notifications
to one HTTP endpoint as signed CloudEvents."""

from __future__ import annotations

import logging
import sys

from lifecycle_common import broker, metrics_http
from lifecycle_common import config as common
from lifecycle_common.wire import schemas
from consumer import config as consumer_config
from consumer.amqp_queue import BatchQueue
from lifecycle_webhook import config, signing
from lifecycle_webhook.http_sender import Sender
from lifecycle_webhook.lanes import Lanes
from lifecycle_webhook.queue_depth import QueueDepth
from lifecycle_webhook.service import Settings, WebhookService

LOG = logging.getLogger(__name__)
PROG = "lifecycle-webhook"
BATCH = 256  # messages read from the queue per turn of the loop, at most


def main(argv: list[str] | None = None) -> int:
    return common.run_main(PROG, config.load, sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    w = conf.webhook
    settings = broker.settings(conf)  # checked when the options loaded
    connector = broker.Connector(settings)
    schemas.prepare()
    secrets = signing.SecretFile(w.secret_file)  # checked when the options loaded
    sender = Sender(w.url, ca_file=w.ca_file, timeout=w.request_timeout,
                    workers=w.max_in_flight, secrets=secrets.secrets)
    topology = config.topology(
        conf.control_exchange, w.queue_name,
        f"{conf.oslo_messaging_notifications.topics[0]}.info", w.queue_type)
    queue = BatchQueue(connector, topology, min(BATCH, w.prefetch), linger=0.0,
                       prefetch=w.prefetch, wakeup=sender.wakeup)
    delivery = Settings(mode=w.mode, wanted=config.event_filter(w.event_types),
                        retry_for=w.retry_for, retry_interval_max=w.retry_interval_max,
                        request_timeout=w.request_timeout,
                        policy=consumer_config.admission_policy(conf, config.GROUP))
    service = WebhookService(queue, sender, Lanes(w.max_in_flight), delivery,
                             depth=QueueDepth(settings, w.queue_name))
    if conf.metrics.bind_port:
        try:
            service.serve_metrics(conf.metrics.bind_host, conf.metrics.bind_port)
        except metrics_http.BindError as exc:
            sender.close(1.0)
            return common.bind_error(PROG, conf, exc)
    LOG.info("delivering %s from queue %s to %s: CloudEvents in %s mode, signed with %d "
             "secret(s), at most %d requests at once, retried for %.0fs",
             ", ".join(w.event_types), w.queue_name, _without_query(w.url), w.mode,
             len(secrets.secrets()),
             w.max_in_flight, w.retry_for)
    return common.serve(service)


def _without_query(url: str) -> str:
    """The URL to log: its query may hold a token."""
    base, _, query = url.partition("?")
    return base + ("?…" if query else "")


if __name__ == "__main__":
    sys.exit(main())
