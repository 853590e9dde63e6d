"""Renaming a host (a short name to its FQDN): the agent refuses another host's state,
and README's procedure carries the host's instances over to the new name."""

from __future__ import annotations

import os
import subprocess

import pytest

from lab.pipeline import command, virsh

pytestmark = pytest.mark.system

URI = "test+unix:///default"


def test_a_host_renamed_as_readme_says(pipeline, domain):
    short, fqdn = f"ren-{pipeline.tag}", f"ren-{pipeline.tag}.example.org"
    pipeline.start_consumer()
    pipeline.start_agent(short, URI)
    virsh(URI, "start", domain)
    pipeline.wait_for_instance(domain, direct=True, power_state="running", host=short)
    assert pipeline.stop_process(f"agent-{short}") == 0
    assert "0 events left in the outbox" in pipeline.log(f"agent-{short}")

    # The same state under the new name: refused, saying how to rename.
    state = f"{pipeline.workdir}/agent-{short}"
    conf = pipeline.agent_conf(fqdn, URI)
    with open(conf) as f:
        text = f.read().replace(f"state_path = {pipeline.workdir}/agent-{fqdn}",
                                f"state_path = {state}")
    with open(conf, "w") as f:
        f.write(text)
    refused = subprocess.run([command("lifecycle-agent"), "--config-file", conf],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused
    assert f"holds the state of host {short!r}" in refused.stderr
    assert f"lifecycle-manage host rename {short} {fqdn}" in refused.stderr

    # README's procedure: rename in the database, move the state aside, start anew.
    said = pipeline.manage("host", "rename", short, fqdn)
    assert said.startswith(f"host {short} renamed {fqdn}: "), said
    os.rename(state, state + ".old")
    pipeline.start_agent(fqdn, URI)
    virsh(URI, "suspend", domain)
    row = pipeline.wait_for_instance(domain, direct=True, power_state="paused", host=fqdn)
    assert row["deleted"] is False
    hosts = {h["name"] for h in pipeline.hosts(direct=True)}
    assert short not in hosts and fqdn in hosts
