"""``--since``: a duration before now or an ISO 8601 timestamp."""

import datetime

import pytest

from consumer.cli.history import parse_since
from lifecycle_common import timeutil

NOW = datetime.datetime(2026, 12, 10, 12, 0, 0, 500000, tzinfo=timeutil.UTC)


@pytest.mark.parametrize("text, before", [
    ("90s", datetime.timedelta(seconds=90)), ("30m", datetime.timedelta(minutes=30)),
    ("1h", datetime.timedelta(hours=1)), ("2d", datetime.timedelta(days=2)),
    ("1w", datetime.timedelta(weeks=1)), ("1h30m", datetime.timedelta(minutes=90)),
    ("0.5h", datetime.timedelta(minutes=30)), (" 10m ", datetime.timedelta(minutes=10)),
])
def test_durations_count_back_from_now(text, before):
    assert parse_since(text, NOW) == NOW - before


@pytest.mark.parametrize("text, moment", [
    ("2026-12-10T08:00:00Z", datetime.datetime(2026, 12, 10, 8, tzinfo=timeutil.UTC)),
    ("2026-12-10T09:00:00+01:00", datetime.datetime(2026, 12, 10, 8, tzinfo=timeutil.UTC)),
    ("2026-12-10T08:00:00", datetime.datetime(2026, 12, 10, 8, tzinfo=timeutil.UTC)),
    ("2026-12-10", datetime.datetime(2026, 12, 10, tzinfo=timeutil.UTC)),
    ("2026-12-10T08:00:00.123456+00:00",
     datetime.datetime(2026, 12, 10, 8, 0, 0, 123456, tzinfo=timeutil.UTC)),
])
def test_timestamps_are_read_as_utc(text, moment):
    assert parse_since(text, NOW) == moment


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "-1h", "1h-", "yesterday", "2026-13-01",
                                  "1 h"])
def test_anything_else_says_what_is_accepted(text):
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, NOW)
