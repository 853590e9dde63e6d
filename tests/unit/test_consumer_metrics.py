"""observability.observe_all: a histogram observed in one pass says what it says when
each amount is observed one by one."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from consumer.observability import LATENCY_BUCKETS, observe_all


def histogram() -> tuple[Histogram, CollectorRegistry]:
    registry = CollectorRegistry()
    return Histogram("latency_seconds", "h", buckets=LATENCY_BUCKETS, registry=registry), registry


def samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples
            if not s.name.endswith("_created")}


AMOUNTS = {
    "none": [],
    "one": [0.004],
    "on every bound, and beside": [b for b in LATENCY_BUCKETS for b in (b, math.nextafter(b, 0),
                                                                           math.nextafter(b, 10))],
    "zero, negative, beyond the last bound, infinite": [0.0, -1.0, 61.0, 1e300, math.inf],
    "a batch": [random.Random(7).expovariate(100) for _ in range(1000)],
}


@pytest.mark.parametrize("amounts", list(AMOUNTS.values()), ids=list(AMOUNTS))
def test_observe_all_is_observe_one_by_one(amounts):
    one_by_one, by_one_registry = histogram()
    at_once, at_once_registry = histogram()
    for amount in amounts:
        one_by_one.observe(amount)
    observe_all(at_once, amounts)
    expected, got = samples(by_one_registry), samples(at_once_registry)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
        else:
            assert got[key] == value, key


def test_nan_counts_in_no_bucket_as_observe():
    one_by_one, by_one_registry = histogram()
    at_once, at_once_registry = histogram()
    one_by_one.observe(math.nan)
    observe_all(at_once, [math.nan])
    buckets = {k: v for k, v in samples(by_one_registry).items() if k[0].endswith("_bucket")}
    assert buckets == {k: v for k, v in samples(at_once_registry).items()
                       if k[0].endswith("_bucket")}


def test_a_histogram_without_the_known_internals_is_observed_one_by_one():
    class Observed:
        def __init__(self):
            self.amounts = []

        def observe(self, amount):
            self.amounts.append(amount)

    observed = Observed()
    observe_all(observed, [1.0, 2.0])
    assert observed.amounts == [1.0, 2.0]


def test_a_labelled_parent_refuses_as_observe_refuses():
    labelled = Histogram("by_type_seconds", "h", ["event_type"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        labelled.observe(1.0)
    with pytest.raises(ValueError):
        observe_all(labelled, [1.0])
