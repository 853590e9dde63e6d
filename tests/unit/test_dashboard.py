"""The Grafana dashboard in etc/grafana: every query names only metrics the services
export, under the names Prometheus scrapes."""

from __future__ import annotations

import json
import os
import re

import pytest

from consumer.service import ConsumerService

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "grafana",
                         "lifecycle-dashboard.json")

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "or", "and", "unless",
    "vector", "topk", "bottomk", "clamp_min", "delta", "abs", "time",
}
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""], "info": ["_info"], "unknown": [""]}


def exported_names(registry) -> set[str]:
    """The sample names a scrape of ``registry`` can show, whether or not a sample has
    been recorded yet (a labelled counter shows none before its first event)."""
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)           # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)          # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)         # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", t)}


def dashboard() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
            for target in panel["targets"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("libvirt")
    from lifecycle_publisher import config as agent_config
    from lifecycle_publisher import observability
    from lifecycle_publisher.cmd import build_agent
    state = tmp_path_factory.mktemp("agent")
    agent = build_agent(agent_config.in_code({"host": "dash-host", "state_path": str(state)},
                                             libvirt={"connection_uri": "test:///default"}))
    from consumer.amqp_queue import BatchQueue
    from consumer.topology import Topology
    from lifecycle_common import broker
    queue = BatchQueue(broker.Connector(broker.plain("rabbit://127.0.0.1/")),  # never connected
                       Topology(exchange="x", queue="q", routing_key="k"), 1, 0)
    service = ConsumerService(queue=queue, store=None, host_down_after=30, retry_max=1)
    webhook, sender = _webhook_service()
    try:
        yield (exported_names(observability.registry(agent))
               | exported_names(service.metrics.registry)
               | exported_names(webhook.metrics.registry))
    finally:
        sender.close(timeout=1.0)


def _webhook_service():
    """A ``WebhookService`` built as ``lifecycle-webhook`` builds it, never started: its
    queue never connects and its sender's workers send nothing (nothing is submitted)."""
    from consumer.amqp_queue import BatchQueue
    from consumer.topology import Topology
    from lifecycle_common import broker
    from lifecycle_webhook import config as webhook_config
    from lifecycle_webhook.http_sender import Sender
    from lifecycle_webhook.lanes import Lanes
    from lifecycle_webhook.service import Settings, WebhookService
    sender = Sender("http://127.0.0.1:9/hook", ca_file=None, timeout=1.0, workers=1,
                    secrets=lambda: (b"secret",))
    queue = BatchQueue(broker.Connector(broker.plain("rabbit://127.0.0.1/")),  # never connected
                       Topology(exchange="x", queue="w", routing_key="k"), 1, linger=0.0,
                       wakeup=sender.wakeup)
    settings = Settings(mode="structured", wanted=webhook_config.event_filter(["instance.*"]),
                        retry_for=60.0, retry_interval_max=2.0, request_timeout=1.0)
    return WebhookService(queue, sender, Lanes(1), settings), sender


def test_the_dashboard_has_the_panels_the_operator_needs():
    titles = " / ".join(title for title, _ in queries()).lower()
    for needed in ("latency", "transition", "outbox depth per host", "hosts up and down",
                   "dead letters", "webhook deliveries", "webhook backlog", "webhook latency"):
        assert needed in titles


# The job each service's processes are scraped under, as the README names them.
JOBS = {"agent_job": "lifecycle-agent", "consumer_job": "lifecycle-consumer",
        "webhook_job": "lifecycle-webhook"}


def test_the_job_variables_default_to_the_services_jobs():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name, job in JOBS.items():
        assert variables[name]["query"] == job
        assert variables[name]["current"] == {"text": job, "value": job}
    memory = [expr for title, expr in queries() if title == "Resident memory"]
    assert memory and all(f"${name}" in memory[0] for name in JOBS)


def test_every_variable_a_query_uses_is_defined():
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    for title, expr in queries():
        used = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}
        assert used <= defined, f"{title}: {sorted(used - defined)} not defined"


@pytest.mark.parametrize(("title", "expr"), queries())
def test_every_query_names_exported_metrics(exported, title, expr):
    names = metric_names(expr)
    assert names, f"{title}: no metric in {expr!r}"
    assert names <= exported, f"{title}: {sorted(names - exported)} not exported"


def test_the_name_finder_finds_names_and_only_names():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x"}[5m])))') \
        == {"a_bucket"}
    assert metric_names("max by (host) (b * on (instance, job) group_left (host) c_info)") \
        == {"b", "c_info"}
    assert metric_names("count(d == 0) or vector(0)") == {"d"}
