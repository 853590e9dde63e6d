"""The systemd units in etc/systemd: Type=notify with a watchdog, and clean to
``systemd-analyze verify`` once their commands point at this checkout's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

UNITS = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "systemd")
NAMES = ["lifecycle-agent.service", "lifecycle-consumer.service", "lifecycle-webhook@.service"]


def settings(name: str) -> dict[str, str]:
    with open(os.path.join(UNITS, name)) as f:
        pairs = [line.strip().split("=", 1) for line in f
                 if "=" in line and not line.lstrip().startswith("#")]
    return {key: value for key, value in pairs}


@pytest.mark.parametrize("name", NAMES)
def test_units_notify_and_have_a_watchdog(name):
    unit = settings(name)
    assert unit["Type"] == "notify"
    assert unit["NotifyAccess"] == "main"
    assert int(unit["WatchdogSec"]) > 0
    assert unit["Restart"] == "on-failure"
    assert "--use-journal" in unit["ExecStart"]


def test_the_webhook_unit_is_a_template_of_one_endpoint_per_instance():
    """lifecycle-webhook@NAME reads NAME's own configuration (its url, queue, secret)."""
    assert "--config-file /etc/lifecycle/webhook-%i.conf" in settings(
        "lifecycle-webhook@.service")["ExecStart"]


@pytest.mark.parametrize("name", NAMES)
def test_units_verify_cleanly(name, tmp_path):
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("no systemd-analyze here")
    bin_dir = os.path.dirname(sys.executable)
    with open(os.path.join(UNITS, name)) as f:
        text = f.read().replace("/usr/bin/", bin_dir + "/")
    name = name.replace("@.", "@alerts.")  # a template is verified as one of its instances
    (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
