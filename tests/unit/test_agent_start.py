"""``lifecycle-agent``'s start while the outbox's disk refuses: it waits and tries
again, rather than exit and be restarted again and again."""

from __future__ import annotations

import logging
import os

from lifecycle_common.systemd import Notifier
from lifecycle_publisher.cmd import when_outbox_writable
from lifecycle_publisher.errors import OutboxCorrupt, OutboxFull
from lifecycle_publisher.outbox_outage import OutboxOutage


def test_a_start_the_disk_refuses_is_tried_again_until_it_works(tmp_path, caplog):
    path = str(tmp_path / "outbox.sqlite")
    attempts = []

    def build():
        attempts.append(1)
        if len(attempts) < 4:
            raise OutboxFull(path, "database or disk is full")
        return "the agent"
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.cmd")
    built = when_outbox_writable(build, "h1", str(tmp_path),
                                 outage=OutboxOutage(retry_max=0.05), notifier=Notifier({}))
    assert built == "the agent" and len(attempts) == 4
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]  # once, not per try
    assert error.message.startswith(f"host h1: the agent cannot start: the outbox at {path} "
                                    "cannot be written, the disk is full: database or disk "
                                    "is full (")
    assert f"host h1: the outbox at {path} can be written again after" in caplog.text


def test_a_corrupt_outbox_found_at_start_is_moved_aside_and_the_start_tried_again(tmp_path,
                                                                                   caplog):
    path = str(tmp_path / "outbox.sqlite")
    with open(path, "wb") as f:
        f.write(b"garbage")

    def build():
        if os.path.exists(path):
            raise OutboxCorrupt(path, "database disk image is malformed")
        return "the agent"
    assert when_outbox_writable(build, "h1", str(tmp_path), notifier=Notifier({})) == "the agent"
    assert [f for f in os.listdir(tmp_path) if f.startswith("outbox.sqlite.corrupt-")]
    assert "is corrupt (database disk image is malformed): moved aside" in caplog.text
