"""lifecycle-webhook's configuration: a bad value stops the service at start, with one
line naming the option (and never printing the secret)."""

from __future__ import annotations

import base64
import os

import pytest

from lifecycle_webhook import cmd, config

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


@pytest.fixture
def files(tmp_path):
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET + "\n")

    def write(webhook: dict, more: str = "") -> str:
        options = {"url": "https://hooks.example.org/libvirt", "secret_file": str(secret),
                   **webhook}
        text = "[webhook]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()
                                       if v is not None) + more
        path = tmp_path / "webhook.conf"
        path.write_text(text)
        return str(path)
    write.secret = secret
    write.dir = tmp_path
    return write


def test_a_good_configuration_loads_with_its_defaults(files):
    conf = config.load(["--config-file", files({})])
    w = conf.webhook
    assert (w.queue_name, w.mode, w.event_types, w.retry_for, w.max_in_flight,
            w.ca_file) == ("lifecycle-webhook", "structured", ["instance.*"], 86400.0, 16,
                           None)
    assert conf.metrics.bind_port == 9180


BAD = {
    "no url": ({"url": None}, "[webhook] url is required"),
    "not http": ({"url": "ftp://hooks.example.org/x"}, "[webhook] url 'ftp://"),
    "no host": ({"url": "https:///path"}, "[webhook] url 'https:///path'"),
    "bad port": ({"url": "https://h:99999/"}, "[webhook] url"),
    "credentials": ({"url": "https://u:pw@h/"}, "[webhook] url: credentials"),
    "no secret file": ({"secret_file": None}, "[webhook] secret_file is required"),
    "missing secret file": ({"secret_file": "/nonexistent/x.secret"},
                            "[webhook] secret_file /nonexistent/x.secret"),
    "bad mode": ({"mode": "batched"}, "mode"),
    "no event types": ({"event_types": ""}, "[webhook] event_types must name"),
    "odd event type": ({"event_types": "server.*"}, "[webhook] event_types 'server.*'"),
    "a typo": ({"event_types": "instance.stoped"}, "'instance.stoped' matches no event"),
    "a space": ({"url": "http://example.org/a b"}, "only the characters of RFC 3986"),
    "not ascii": ({"url": "http://example.org/\u00fc"}, "only the characters of RFC 3986"),
    "port zero": ({"url": "http://example.org:0/"}, "port 0"),
    "fragment": ({"url": "http://example.org/x#y"}, "a fragment is never sent"),
    "in flight zero": ({"max_in_flight": 0}, "max_in_flight"),
    "negative retry_for": ({"retry_for": -1}, "retry_for"),
    "bad timeout": ({"request_timeout": "soon"}, "request_timeout"),
    "missing ca file": ({"ca_file": "/nonexistent/ca.pem"}, "[webhook] ca_file"),
    "template without host": ({"publisher_identity": "host_user",
                               "publisher_user_template": "agents"},
                              "[webhook] publisher_user_template"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_option_stops_the_service_naming_it(files, capsys, case):
    options, expected = BAD[case]
    assert cmd.main(["--config-file", files(options)]) == 2
    err = capsys.readouterr().err
    assert "lifecycle-webhook: configuration error" in err
    assert expected in err, err


@pytest.mark.parametrize("content", ["", "# only a comment\n", "s3cr3t\n", "whsec_***\n"])
def test_a_secret_file_that_holds_no_secret_stops_it_without_printing_it(files, capsys,
                                                                          content):
    files.secret.write_text(content)
    assert cmd.main(["--config-file", files({})]) == 2
    err = capsys.readouterr().err
    assert "[webhook] secret_file" in err
    assert "s3cr3t" not in err


def test_a_ca_file_that_is_not_pem_stops_it(files, capsys):
    bad = files.dir / "ca.pem"
    bad.write_text("not a certificate\n")
    assert cmd.main(["--config-file", files({"ca_file": str(bad)})]) == 2
    assert "[webhook] ca_file" in capsys.readouterr().err


def test_an_unreadable_secret_file_is_named(files, capsys):
    if os.geteuid() == 0:
        files.secret.chmod(0)  # root reads it anyway: a directory is unreadable as a file
        path = str(files.dir)
    else:
        files.secret.chmod(0)
        path = str(files.secret)
    assert cmd.main(["--config-file", files({"secret_file": path})]) == 2
    assert f"[webhook] secret_file {path}" in capsys.readouterr().err


def test_event_types_are_globs():
    wanted = config.event_filter(["instance.*", " host.heartbeat"])
    assert wanted("instance.started") and wanted("instance.watchdog")
    assert wanted("host.heartbeat") and not wanted("host.inventory")
    assert config.load  # every glob of the default matches a known type:
    assert any(config.event_filter(["instance.*"])(t) for t in config.KNOWN_EVENT_TYPES)
    only_faults = config.event_filter(["instance.watchdog", "instance.io_error"])
    assert only_faults("instance.io_error") and not only_faults("instance.started")


def test_the_queue_is_single_active_consumer_and_lazy_when_classic():
    classic = config.topology("openstack", "hooks", "notifications.info")
    assert classic.queue_arguments() == {
        "x-dead-letter-exchange": "hooks.dlx", "x-single-active-consumer": True,
        "x-queue-mode": "lazy"}
    quorum = config.topology("openstack", "hooks", "notifications.info", "quorum")
    assert quorum.queue_arguments() == {  # (a quorum queue refuses x-queue-mode)
        "x-dead-letter-exchange": "hooks.dlx", "x-queue-type": "quorum",
        "x-single-active-consumer": True}
    assert quorum.dead_letter_queue == "hooks.dlq"
