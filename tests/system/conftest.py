"""System tests: the console scripts as real processes against libvirtd."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from lab.pipeline import Pipeline, domain_xml, virsh
from tests.support.systemd_notify import NotifySocket

TEST_URI = "test+unix:///default"
QEMU_URI = "qemu:///system"


def _libvirtd_answers() -> bool:
    try:
        return subprocess.run(["virsh", "-c", TEST_URI, "version"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def libvirtd():
    """A connection to libvirtd's shared test hypervisor, held for the whole test (per
    test: a test may restart libvirtd, which ends every connection)."""
    if not _libvirtd_answers():
        message = ("libvirtd does not answer on test+unix:///default; "
                   "run tools/bootstrap.sh (it starts virtlogd and libvirtd)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    import libvirt
    # The shared test hypervisor keeps defined domains only while a client is connected.
    conn = libvirt.open(TEST_URI)
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass  # a test restarted libvirtd under it


FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure():
    """Record a measured figure; all are printed at the end of the run."""
    def record(name: str, value: float, unit: str = "ms") -> None:
        FIGURES.append((name, f"{value:.1f} {unit}"))
    return record


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures measured by the system tests")
        for name, value in FIGURES:
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture
def pipeline(tmp_path, libvirtd):
    tag = uuid.uuid4().hex[:8]
    pipe = Pipeline(str(tmp_path / "pipeline"), exchange=f"systest-{tag}",
                    queue=f"systest-{tag}", heartbeat_interval=0.5, host_down_after=3.0)
    pipe.tag = tag
    pipe.db_sync()
    yield pipe
    pipe.stop()
    pipe.delete_broker_objects()



@pytest.fixture
def notify_socket(tmp_path):
    """systemd's notification socket, played by the test (``NotifySocket``)."""
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


@pytest.fixture
def domain(pipeline):
    """A domain defined on libvirtd's shared test hypervisor for the test (destroyed and
    undefined at its end): its name."""
    name = f"dom-{pipeline.tag}"
    path = f"{pipeline.workdir}/{name}.xml"
    with open(path, "w") as f:
        f.write(domain_xml(name))
    virsh(TEST_URI, "define", path)
    yield name
    virsh(TEST_URI, "destroy", name, check=False)
    virsh(TEST_URI, "undefine", name, check=False)


@pytest.fixture
def qemu():
    """libvirtd's QEMU driver answers (skip on a laptop without it, fail under CI)."""
    done = subprocess.run(["virsh", "-c", QEMU_URI, "version"], capture_output=True, timeout=30)
    if done.returncode != 0 or not os.path.exists("/usr/bin/qemu-system-x86_64"):
        message = f"no QEMU behind {QEMU_URI}; run tools/bootstrap.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
