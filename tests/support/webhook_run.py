"""A real ``WebhookService`` on a test's own queue (``amqp_isolation``), toward a real
receiver (``lab.webhook_receiver``), built as ``lifecycle-webhook`` builds it; and the
fixtures of the webhook tests (``secret``, ``secret_path``, ``receivers``: import them
into the test module)."""

from __future__ import annotations

import os

import pytest

from consumer.amqp_queue import BatchQueue
from consumer.topology import Topology
from lifecycle_common import broker
from lifecycle_webhook import config, signing
from lifecycle_webhook.http_sender import Sender
from lifecycle_webhook.lanes import Lanes
from lifecycle_webhook.queue_depth import QueueDepth
from lifecycle_webhook.service import Settings, WebhookService
from lab.webhook_receiver import Receiver, write_secret_file
from tests.support.consumer_run import ROUTING_KEY


new_secret = signing.new_secret


def secret_file(directory, *secrets: str) -> str:
    return write_secret_file(os.path.join(str(directory), "webhook.secret"), *secrets)


def topology(isolation, label: str = "webhook", queue_type: str = "classic") -> Topology:
    """The webhook's queue (deleted at the test's end with its .dlq and .dlx)."""
    return config.topology(isolation.exchange, isolation.queue_name(label), ROUTING_KEY,
                           queue_type)


def service(isolation, url: str, secrets_path: str, *, label: str = "webhook",
            mode: str = "structured", event_types=("instance.*",), retry_for: float = 60.0,
            retry_interval_max: float = 2.0, max_in_flight: int = 8,
            request_timeout: float = 5.0, ca_file: str | None = None,
            prefetch: int = 1000, queue_topology: Topology | None = None,
            transport_url: str | None = None, depth_interval: float = 0.5) -> WebhookService:
    queue_topology = queue_topology or topology(isolation, label)
    secrets = signing.SecretFile(secrets_path)
    sender = Sender(url, ca_file=ca_file, timeout=request_timeout, workers=max_in_flight,
                    secrets=secrets.secrets)
    queue = BatchQueue(broker.Connector(broker.plain(transport_url or isolation.transport_url)),
                       queue_topology, min(256, prefetch), linger=0.0, prefetch=prefetch,
                       wakeup=sender.wakeup, retry_max=1.0)
    settings = Settings(mode=mode, wanted=config.event_filter(list(event_types)),
                        retry_for=retry_for, retry_interval_max=retry_interval_max,
                        request_timeout=request_timeout)
    depth = QueueDepth(broker.plain(transport_url or isolation.transport_url),
                       queue_topology.queue, interval=depth_interval)
    return WebhookService(queue, sender, Lanes(max_in_flight), settings, retry_max=0.5,
                          depth=depth)


# -- fixtures (imported by the test modules that use them) ---------------------------

@pytest.fixture
def secret() -> str:
    """A new signing secret, ``whsec_...``."""
    return new_secret()


@pytest.fixture
def secret_path(tmp_path, secret) -> str:
    """A secrets file holding ``secret``."""
    return secret_file(tmp_path, secret)


@pytest.fixture
def receivers():
    """``make(secret, **kwargs) -> Receiver``, started; each stopped (and anything it
    holds let go) at the end of the test."""
    started: list[Receiver] = []

    def make(secret, **kwargs) -> Receiver:
        receiver = Receiver(secret, **kwargs)
        started.append(receiver)
        return receiver.start()
    yield make
    for receiver in started:
        receiver.delay(0)
        receiver.release()
        receiver.stop()
