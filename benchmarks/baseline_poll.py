"""Baseline for latency: the periodic poll (nova's ``sync_power_states``, every 600 s by
default). A change waits for the next poll, which comes at a uniformly random moment
within the interval: its delay is uniform on (0, interval]. Pure; nothing to run, so
the figures are this model's, not a measurement.
"""

from __future__ import annotations

INTERVAL = 600.0


def percentiles_ms(interval: float = INTERVAL) -> dict[str, float]:
    """p50, p99 and max of the detection delay, in milliseconds."""
    return {"p50": 0.50 * interval * 1000, "p99": 0.99 * interval * 1000,
            "max": interval * 1000}
