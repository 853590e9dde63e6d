import datetime
import random

import pytest

from lifecycle_common import timeutil

def _reference(seconds: float) -> str:
    return timeutil.isoformat(datetime.datetime.fromtimestamp(seconds, timeutil.UTC))


EDGES = [0.0, 1.5, 1_795_596_800.0, 1_795_596_800.9999995, 1_795_596_800.0000005,
         1_795_596_800.9999994, 1_795_596_799.999_999_9, -0.5, -1.0000005, 4102444800.25]


@pytest.mark.parametrize("seconds", EDGES)
def test_isoformat_epoch_matches_datetime_at_the_edges(seconds):
    assert timeutil.isoformat_epoch(seconds) == _reference(seconds)


def test_isoformat_epoch_matches_datetime_everywhere():
    rng = random.Random(4)
    for _ in range(20_000):
        seconds = rng.uniform(-1e9, 4e9)
        if rng.random() < 0.5:  # right on a half microsecond: the rounding rule shows
            seconds = round(seconds, 6) + rng.choice((5e-7, -5e-7))
        assert timeutil.isoformat_epoch(seconds) == _reference(seconds)


def test_isoformat_epoch_form():
    assert timeutil.isoformat_epoch(1_795_596_800.25) == "2026-11-25T08:53:20.250000+00:00"
