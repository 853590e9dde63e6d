"""Metric families a collector builds at each scrape, named ``<prefix><name>``: the
shapes both services' collectors use."""

from __future__ import annotations

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lifecycle_common.health import Report, Status

# No '<histogram>_created' series: they double what is exported for nothing a
# dashboard of these services reads (process_start_time_seconds says when it began).
prometheus_client.disable_created_metrics()


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def health_status(name: str, service: str, report: Report) -> GaugeMetricFamily:
    """One series per status, 1 for the current one: ``name{status="failing"} == 1``
    is the alert."""
    family = GaugeMetricFamily(name, f"1 for the {service}'s current health "
                                     "(ok, degraded, failing).", labels=["status"])
    for status in Status:
        family.add_metric([status.value], int(report.status is status))
    return family
