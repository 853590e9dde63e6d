"""The benchmarks' production shape works on this machine: a libvirtd of the run's own
(session mode, as nobody) holds its domains, load processes change them through its
socket, a bare callback in another process sees every event, and stopping the daemon
leaves nothing behind."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

import pytest

from benchmarks import daemons
from benchmarks.harness import ModuleProcess

pytestmark = pytest.mark.system


class FakeRun:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.cleanups = []

    def on_cleanup(self, action) -> None:
        self.cleanups.append(action)

    def cleanup(self) -> None:
        for action in reversed(self.cleanups):
            action()


def test_a_daemon_of_its_own_carries_every_event_of_the_load_to_a_callback(tmp_path, libvirtd):
    run = FakeRun(str(tmp_path))
    try:
        [daemon] = daemons.start_daemons(run, ["bench-t00"], 6)
        pid = daemon.pid
        with open(f"/proc/{pid}/status") as f:
            uid = str(pwd.getpwnam(daemons.USER).pw_uid)
            assert any(line.split()[1] == uid for line in f if line.startswith("Uid:"))
        bare = ModuleProcess(run, "bare_callback", {"uri": daemon.uri, "expected": 24,
                                                    "timeout": 60}, "bare")
        bare.line(60)
        loaders = [ModuleProcess(run, "libvirt_load", {
            "targets": [{"uri": daemon.uri, "host": daemon.host, "first": first, "count": 3}],
            "steps": 4, "start_at": time.time() + 1.0}, f"load-{first}") for first in (0, 3)]
        done = [proc.line(60) for proc in loaders]
        assert sum(d["events"] for d in done) == 24
        got = bare.line(60)
        assert got["events"] == 24
        assert got["t_first"] >= min(d["t_start"] for d in done) - 0.01
        # Four steps of the cycle: every domain runs again, as it began.
        states = subprocess.run(["virsh", "-q", "-c", daemon.uri, "list", "--state-running",
                                 "--name"], capture_output=True, text=True, check=True)
        assert len(states.stdout.split()) == 6
    finally:
        run.cleanup()
    assert daemons._gone(pid, timeout=0)
    assert not os.path.exists(daemon.dir)
