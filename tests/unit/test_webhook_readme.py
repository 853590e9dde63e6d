"""The receiver README's "Webhooks and CloudEvents" shows works as written: it verifies
what lifecycle-webhook sends, in both modes, and refuses a forged request."""

from __future__ import annotations

import os
import re
import time

import pytest

from lifecycle_common import wire
from lifecycle_webhook import cloudevents, signing

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "lifecycle_common", "wire",
                      "samples", "instance.watchdog.json")


def readme_receiver(secret_path: str) -> dict:
    """The README's receiver, its secret read from ``secret_path``, its ``handle`` and
    ``already_seen`` recording what it is given."""
    with open(README) as f:
        text = f.read()
    section = text.split("## Webhooks and CloudEvents", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/etc/hooks/libvirt.secret", secret_path)
    handled, seen = [], set()

    def already_seen(event_id):
        if event_id in seen:
            return True
        seen.add(event_id)
        return False
    namespace = {"handle": lambda *args: handled.append(args), "already_seen": already_seen}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    namespace["handled"] = handled
    return namespace


def watchdog_notification():
    with open(SAMPLE, "rb") as f:
        message = f.read().decode()
    import json
    return wire.decode(json.dumps({"oslo.version": "2.0", "oslo.message": message}))


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_the_readme_receiver_verifies_and_reads_what_is_sent(tmp_path, mode):
    secret = signing.new_secret()
    path = tmp_path / "hook.secret"
    path.write_text(secret + "\n")
    receiver = readme_receiver(str(path))
    note = watchdog_notification()
    request = cloudevents.encode(note, mode)
    headers = {**request.headers, **signing.headers(
        signing.parse_secrets(secret), cloudevents.event_id(note), int(time.time()),
        request.body)}
    assert receiver["receive"](headers, request.body) == 200
    assert receiver["receive"](headers, request.body) == 200  # a retry: seen already
    [(event_type, subject, data)] = receiver["handled"]
    assert event_type == "io.libvirt-lifecycle.instance.watchdog"
    assert subject == note.payload.uuid
    assert data["lifecycle_object.data"]["action"] == note.payload.action

    forged = request.body.replace(b"\"pause\"", b"\"reset\"")
    assert forged != request.body
    assert receiver["receive"](headers, forged) == 401
