"""``events list --type``: globs matched as ``events tail`` matches them, against the
event types the journal can hold."""

import pytest

from consumer.cli import history
from lifecycle_common.wire import vocabulary


@pytest.mark.parametrize("globs, expected", [
    (["instance.io_error"], {"instance.io_error"}),
    (["instance.watch*", "instance.reboot?d"], {"instance.watchdog", "instance.rebooted"}),
    (["host.*"], {"host.inventory"}),  # heartbeats only update their host
    (["Instance.*"], set()),            # case-sensitive, as events tail
    (["instance.nothing"], set()),
])
def test_globs_name_the_journaled_types(globs, expected):
    assert history.journaled_types(globs) == expected


def test_instance_glob_names_every_transition_and_fault():
    assert history.journaled_types(["instance.*"]) == (
        vocabulary.LIFECYCLE_EVENT_TYPES | vocabulary.FAULT_EVENT_TYPES)
    assert history.journaled_types(["*"]) == history.JOURNALED_TYPES
