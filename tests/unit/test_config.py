"""Configuration: a bad value stops a service at start with a message naming the option,
and oslo-config-generator's entry points list every option of the contract."""

import importlib.metadata

import pytest
from oslo_config import cfg, generator

import consumer.cmd.service
from consumer import config as consumer_config
from lifecycle_common.config import ConfigError
from lifecycle_publisher import cmd as agent_cmd
from lifecycle_publisher import config as agent_config
from lifecycle_webhook import config as webhook_config


@pytest.fixture
def config_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "service.conf"
        path.write_text(text)
        return str(path)
    return write


AGENT_BAD = {
    "heartbeat not a number": ("[agent]\nheartbeat_interval = abc\n", "heartbeat_interval"),
    "window below its minimum": ("[agent]\npublish_window = 0\n", "publish_window"),
    "window above its maximum": ("[agent]\npublish_window = 70000\n", "publish_window"),
    "synchronous not a choice": ("[agent]\noutbox_synchronous = OFF\n", "outbox_synchronous"),
    "negative delay": ("[agent]\nstopped_event_delay = -1\n", "stopped_event_delay"),
    "negative coalescing": ("[agent]\nfault_coalesce_interval = -0.5\n",
                            "fault_coalesce_interval"),
    "coalescing not a number": ("[agent]\nfault_coalesce_interval = often\n",
                                "fault_coalesce_interval"),
    "reconnect not a number": ("[libvirt]\nreconnect_interval_max = soon\n",
                               "reconnect_interval_max"),
    "log rotation not a choice": ("[DEFAULT]\nlog_rotation_type = weekly\n",
                                  "log_rotation_type"),
    "empty host": ("[DEFAULT]\nhost =\n", "host"),
    "host with a space": ("[DEFAULT]\nhost = compute 1\n", r"\[DEFAULT\] host 'compute 1' may hold"),
    "host too long": (f"[DEFAULT]\nhost = {'h' * 256}\n", "host .* is longer than 255"),
    "no topics": ("[oslo_messaging_notifications]\ntopics =\n", "topics"),
}

CONSUMER_BAD = {
    "queue type not a choice": ("[consumer]\nqueue_type = fancy\n", "queue_type"),
    "batch size zero": ("[consumer]\nbatch_size = 0\n", "batch_size"),
    "batch size not a number": ("[consumer]\nbatch_size = lots\n", "batch_size"),
    "linger too long": ("[consumer]\nbatch_linger = 5\n", "batch_linger"),
    "host_down_after zero": ("[consumer]\nhost_down_after = 0\n", "host_down_after"),
    "identity not a choice": ("[consumer]\npublisher_identity = some\n", "publisher_identity"),
    "template naming another field": ("[consumer]\npublisher_user_template = lc-{hots}\n",
                                      r"publisher_user_template 'lc-\{hots\}': only \{host\}"),
    "template without the host": ("[consumer]\npublisher_user_template = lifecycle\n",
                                   "publisher_user_template 'lifecycle' must contain"),
    "template with a bad brace": ("[consumer]\npublisher_user_template = {host\n",
                                  "publisher_user_template"),
    "clock skew zero": ("[consumer]\nmax_clock_skew = 0\n", "max_clock_skew"),
    "no topics": ("[oslo_messaging_notifications]\ntopics =\n", "topics"),
}


@pytest.mark.parametrize(("text", "option"), AGENT_BAD.values(), ids=list(AGENT_BAD))
def test_agent_load_names_the_bad_option(config_file, text, option):
    with pytest.raises(ConfigError, match=option):
        agent_config.load(["--config-file", config_file(text)])


@pytest.mark.parametrize(("text", "option"), CONSUMER_BAD.values(), ids=list(CONSUMER_BAD))
def test_consumer_load_names_the_bad_option(config_file, text, option):
    with pytest.raises(ConfigError, match=option):
        consumer_config.load(["--config-file", config_file(text)])


def test_agent_load_reads_good_values(config_file, tmp_path):
    conf = agent_config.load(["--config-file", config_file(
        "[DEFAULT]\nhost = compute-7\n"
        f"state_path = {tmp_path}\n"
        "transport_url = rabbit://u:p@h1,u:p@h2/vh\n"
        "[libvirt]\nconnection_uri = test:///default\n"
        "[agent]\nheartbeat_interval = 2.5\npublish_window = 64\n"
        "[oslo_messaging_notifications]\ntopics = notifications,audit\n")])
    assert conf.host == "compute-7"
    assert conf.state_path == str(tmp_path)
    assert conf.transport_url == "rabbit://u:p@h1,u:p@h2/vh"
    assert conf.libvirt.connection_uri == "test:///default"
    assert (conf.agent.heartbeat_interval, conf.agent.publish_window) == (2.5, 64)
    assert conf.oslo_messaging_notifications.topics == ["notifications", "audit"]


def test_consumer_load_reads_good_values(config_file):
    conf = consumer_config.load(["--config-file", config_file(
        "[database]\nconnection = sqlite:////tmp/x.sqlite\n"
        "[consumer]\nqueue_type = quorum\nbatch_size = 50\n")])
    assert conf.database.connection == "sqlite:////tmp/x.sqlite"
    assert (conf.consumer.queue_type, conf.consumer.batch_size) == ("quorum", 50)
    assert conf.control_exchange == "openstack"


def test_config_dir_is_read(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-agent.conf").write_text("[agent]\npublish_window = 0\n")
    with pytest.raises(ConfigError, match="publish_window"):
        agent_config.load(["--config-dir", str(tmp_path / "conf.d")])


# -- the console scripts: status 2 and one line naming the option ------------------

MAINS = {
    "lifecycle-agent": (agent_cmd.main, "[agent]\nheartbeat_interval = abc\n",
                        "heartbeat_interval"),
    "lifecycle-agent window": (agent_cmd.main, "[agent]\npublish_window = 0\n",
                               "publish_window"),
    "lifecycle-agent coalescing": (agent_cmd.main,
                                   "[agent]\nfault_coalesce_interval = -1\n",
                                   "fault_coalesce_interval"),
    "lifecycle-consumer": (consumer.cmd.service.main, "[consumer]\nqueue_type = fancy\n",
                           "queue_type"),
}


@pytest.mark.parametrize(("main", "text", "option"), MAINS.values(), ids=list(MAINS))
def test_main_exits_2_naming_the_option(config_file, capsys, main, text, option):
    assert main(["--config-file", config_file(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "configuration error" in err[0]
    assert option in err[0]


@pytest.mark.parametrize(("main", "prog"), [(agent_cmd.main, "lifecycle-agent"),
                                            (consumer.cmd.service.main, "lifecycle-consumer")])
def test_main_refuses_a_bad_transport_url_before_connecting(config_file, capsys, tmp_path,
                                                            main, prog):
    text = (f"[DEFAULT]\ntransport_url = rabbit://h:abc/\nstate_path = {tmp_path}\n"
            f"[database]\nconnection = sqlite:///{tmp_path}/db.sqlite\n")
    if main is agent_cmd.main:
        pytest.importorskip("libvirt")
    assert main(["--config-file", config_file(text)]) == 2
    err = capsys.readouterr().err
    assert f"{prog}: configuration error: [DEFAULT] transport_url" in err
    assert "bad port 'abc'" in err


# -- oslo-config-generator ----------------------------------------------------------

def entry_point_opts() -> dict[str, dict[str, set[str]]]:
    """namespace -> group -> option names, through the installed entry points."""
    found = {}
    for ep in importlib.metadata.entry_points(group="oslo.config.opts"):
        groups: dict[str, set[str]] = {}
        for group, opts in ep.load()():
            groups.setdefault(group, set()).update(opt.name for opt in opts)
        found[ep.name] = groups
    return found


REQUIRED = {
    "lifecycle_publisher": {
        "DEFAULT": {"host", "transport_url", "control_exchange", "state_path"},
        "libvirt": {"connection_uri"},
        "oslo_messaging_notifications": {"topics"},
    },
    "consumer": {
        "DEFAULT": {"host", "transport_url", "control_exchange"},
        "database": {"connection"},
        "oslo_messaging_notifications": {"topics"},
    },
    "lifecycle_webhook": {
        "DEFAULT": {"host", "transport_url", "control_exchange"},
        "webhook": {"queue_name", "url", "mode", "secret_file", "event_types", "retry_for",
                    "max_in_flight", "ca_file"},
        "metrics": {"bind_host", "bind_port"},
        "oslo_messaging_notifications": {"topics"},
    },
}


@pytest.mark.parametrize("namespace", list(REQUIRED))
def test_entry_points_list_the_contract_options(namespace):
    listed = entry_point_opts()[namespace]
    for group, names in REQUIRED[namespace].items():
        assert names <= listed.get(group, set()), f"[{group}] in {namespace}"


@pytest.mark.parametrize(("namespace", "register"), [
    ("lifecycle_publisher", agent_config.register_opts),
    ("consumer", consumer_config.register_opts),
    ("lifecycle_webhook", webhook_config.register_opts),
])
def test_entry_points_list_every_registered_option(namespace, register):
    conf = cfg.ConfigOpts()
    own_opts = set(conf)  # what oslo.config registers by itself (config_source, ...)
    register(conf)
    registered: dict[str, set[str]] = {"DEFAULT": set()}
    for name in set(conf) - own_opts:
        if isinstance(conf[name], cfg.ConfigOpts.GroupAttr):
            registered[name] = set(conf[name])
        else:
            registered["DEFAULT"].add(name)
    ours, logging = entry_point_opts()[namespace], entry_point_opts()["oslo.log"]
    logging = {group or "DEFAULT": {n.replace("-", "_") for n in names}  # CLI names: dashes
               for group, names in logging.items()}
    for group, names in registered.items():  # each listed by us or, for logging, oslo.log
        assert names - ours.get(group, set()) <= logging.get(group, set()), group
    for group, names in ours.items():  # and we list nothing that is not registered
        assert names <= registered.get(group, set()), group
    assert {"debug", "log_file", "log_dir", "log_config_append", "use_journal",
            "use_json"} <= registered["DEFAULT"]


@pytest.mark.parametrize(("namespace", "expected"), [
    ("lifecycle_publisher", ["[libvirt]", "#connection_uri = qemu:///system", "#state_path",
                             "[oslo_messaging_notifications]", "#topics = notifications",
                             "#host = <hostname>"]),
    ("consumer", ["[database]", "#connection = sqlite:", "#queue_type = classic",
                  "#control_exchange = openstack"]),
])
def test_oslo_config_generator_writes_the_sample(tmp_path, namespace, expected):
    output = tmp_path / "sample.conf"
    generator.main(["--namespace", namespace, "--output-file", str(output)])
    text = output.read_text()
    for line in expected:
        assert line in text


@pytest.mark.parametrize("service", ["lifecycle-agent", "lifecycle-consumer",
                                     "lifecycle-webhook"])
def test_the_sample_configurations_are_what_the_generator_writes(tmp_path, service):
    """etc/<service>.conf.sample is regenerated whenever an option changes:
    oslo-config-generator --config-file etc/<service>-config-generator.conf."""
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    output = tmp_path / "sample.conf"
    generator.main(["--config-file",
                    os.path.join(root, "etc", f"{service}-config-generator.conf"),
                    "--output-file", str(output)])
    with open(os.path.join(root, "etc", f"{service}.conf.sample")) as f:
        assert output.read_text() == f.read(), (
            f"etc/{service}.conf.sample is out of date: run oslo-config-generator "
            f"--config-file etc/{service}-config-generator.conf")


def test_a_bad_transport_url_stops_both_services_naming_the_option(tmp_path, capsys):
    from consumer.cmd import service
    from lifecycle_publisher import cmd
    conf = tmp_path / "bad.conf"
    conf.write_text("[DEFAULT]\ntransport_url = http://user:pw@host/\n")
    for main in (cmd.main, service.main):
        assert main(["--config-file", str(conf)]) == 2
        err = capsys.readouterr().err
        assert "transport_url" in err and "pw@" not in err


# -- oslo.log's options ----------------------------------------------------------------

def test_a_bad_command_line_logging_option_is_named_and_stops_the_service(config_file, capsys):
    """oslo.log's options that are also command-line options (--debug, --use-json) are
    checked by oslo.config, which names them; the service then stops like for any other."""
    from lifecycle_common.config import run_main
    ran = []
    status = run_main("lifecycle-agent", agent_config.load,
                      ["--config-file", config_file("[DEFAULT]\nuse_json = maybe\n")], ran.append)
    err = capsys.readouterr().err
    assert status == 2 and not ran
    assert "--use_json: Invalid Boolean value: maybe" in err
    assert "lifecycle-agent: configuration error" in err


def test_log_file_and_json_format_are_honoured(config_file, tmp_path, capsys):
    """--log-file and use_json work as on every OpenStack service."""
    import json
    import logging
    from lifecycle_common.config import run_main
    log_file = tmp_path / "agent.log"

    def body(conf):
        logging.getLogger("lifecycle_publisher.test").info("hello %s", "operator")
        logging.getLogger("lifecycle_publisher.test").debug("details")
        return 0
    try:
        status = run_main("lifecycle-agent", agent_config.load,
                          ["--config-file", config_file("[DEFAULT]\nuse_json = true\n"),
                           "--log-file", str(log_file), "--debug"], body)
    finally:
        for handler in list(logging.getLogger().handlers):  # leave the root logger as found
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert status == 0
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    messages = {r["message"]: r for r in records}
    assert messages["hello operator"]["levelname"] == "INFO"
    assert messages["hello operator"]["name"] == "lifecycle_publisher.test"
    assert "details" in messages  # --debug
