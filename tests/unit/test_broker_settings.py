"""broker.settings: transport_url and [oslo_messaging_rabbit] -> how connections are
opened; a bad value stops the service with a message naming it."""

from __future__ import annotations

import pathlib
import ssl
import subprocess
import sys

import pytest

from consumer import config as consumer_config
from lifecycle_common import broker
from lifecycle_common.config import ConfigError
from lifecycle_common.transport import Broker
from lifecycle_publisher import config as agent_config

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def load(tmp_path):
    def load(text: str, service=consumer_config):
        path = tmp_path / "service.conf"
        path.write_text(text)
        return service.load(["--config-file", str(path)])
    return load


def settings(load, text: str) -> broker.BrokerSettings:
    return broker.settings(load(text))


def test_defaults_are_plain_amqplain_with_a_heartbeat(load):
    s = settings(load, "")
    assert (s.brokers, s.vhost) == ((Broker("127.0.0.1", 5672, "guest", "guest"),), "")
    assert (s.login_method, s.tls, s.heartbeat, s.failover) == ("AMQPLAIN", None, 30,
                                                                "round-robin")


def test_ssl_on_the_url_turns_tls_on_as_for_openstack_services(load, test_pki):
    for query in ("ssl=1", "ssl=true", "ssl=True"):
        s = settings(load, f"[DEFAULT]\ntransport_url = rabbit://u:p@localhost:5671/?{query}\n"
                           f"[oslo_messaging_rabbit]\nssl_ca_file = {test_pki.ca_cert}\n")
        assert s.tls is not None and s.tls.verify_hostname, query
        options = s.tls.options("localhost")
        assert options["ca_certs"] == str(test_pki.ca_cert)
        assert options["cert_reqs"] == ssl.CERT_REQUIRED
        assert options["server_hostname"] == "localhost"


def test_query_keys_override_the_options_typed_as_the_options(load, test_pki):
    s = settings(load, "[DEFAULT]\ntransport_url = rabbit://u:p@mq1,u:p@mq2/?ssl=1"
                       f"&ssl_ca_file={test_pki.ca_cert}&ssl_enforce_hostname_verification=no"
                       "&kombu_failover_strategy=shuffle&heartbeat_timeout_threshold=10\n"
                       "[oslo_messaging_rabbit]\nssl = false\nheartbeat_timeout_threshold = 60\n")
    assert s.tls is not None and not s.tls.verify_hostname
    assert "server_hostname" not in s.tls.options("mq1")
    assert (s.failover, s.heartbeat) == ("shuffle", 10)


def test_each_broker_is_verified_against_its_own_name(load, test_pki):
    s = settings(load, "[DEFAULT]\ntransport_url = rabbit://u:p@mq1:5671,u:p@mq2:5671/\n"
                       f"[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {test_pki.ca_cert}\n")
    assert [s.tls.options(b.hostname)["server_hostname"] for b in s.brokers] == ["mq1", "mq2"]


def test_client_certificate_and_external_login(load, test_pki):
    cert, key = test_pki.client_cert("compute-7")
    s = settings(load, "[oslo_messaging_rabbit]\nssl = true\n"
                       f"ssl_ca_file = {test_pki.ca_cert}\nssl_cert_file = {cert}\n"
                       f"ssl_key_file = {key}\nrabbit_login_method = EXTERNAL\n")
    assert s.tls.options("mq")["certfile"] == str(cert)
    assert s.tls.options("mq")["keyfile"] == str(key)
    assert s.login_user(s.brokers[0]) == "compute-7"


def test_the_login_user_is_the_url_user_of_the_broker_connected_to(load):
    s = settings(load, "[DEFAULT]\ntransport_url = rabbit://c7:p@mq1,c7b:p@mq2/\n")
    assert [s.login_user(b) for b in s.brokers] == ["c7", "c7b"]


@pytest.mark.parametrize("version,minimum,maximum", [
    ("", ssl.TLSVersion.TLSv1_2, None), ("TLSv1_2", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    ("tlsv1_3", ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
    ("SSLv23", ssl.TLSVersion.TLSv1_2, None)])
def test_ssl_version(load, version, minimum, maximum):
    s = settings(load, f"[oslo_messaging_rabbit]\nssl = true\nssl_version = {version}\n")
    assert (s.tls.minimum, s.tls.maximum) == (minimum, maximum)


BAD = {
    "an unknown query key": (
        "[DEFAULT]\ntransport_url = rabbit://u:p@h/?sll=1\n",
        r"transport_url: query key 'sll' is not supported \(supported: amqp_durable_queues, "
        r"heartbeat_timeout_threshold, kombu_failover_strategy, rabbit_login_method, ssl,"),
    "a query value of the wrong type": (
        "[DEFAULT]\ntransport_url = rabbit://u:p@h/?ssl=maybe\n", r"transport_url: ssl='maybe'"),
    "non-durable queues asked for": (
        "[DEFAULT]\ntransport_url = rabbit://u:p@h/?amqp_durable_queues=false\n",
        "always durable"),
    "a CA file that is not there": (
        "[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = /nonexistent/ca.pem\n",
        r"\[oslo_messaging_rabbit\] ssl_ca_file '/nonexistent/ca.pem': cannot be read"),
    "a CA file that is no certificate": (
        "[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = /etc/hostname\n",
        r"ssl_ca_file '/etc/hostname':"),
    "a key without its certificate": (
        "[oslo_messaging_rabbit]\nssl = true\nssl_key_file = /etc/hostname\n",
        "ssl_key_file is set but ssl_cert_file is not"),
    "an old TLS version": (
        "[oslo_messaging_rabbit]\nssl = true\nssl_version = TLSv1\n",
        r"ssl_version 'TLSv1': use TLSv1_2, TLSv1_3"),
    "EXTERNAL without TLS": (
        "[oslo_messaging_rabbit]\nrabbit_login_method = EXTERNAL\n",
        "EXTERNAL logs in with a client certificate: set ssl = true and ssl_cert_file"),
    "a login method not offered": (
        "[oslo_messaging_rabbit]\nrabbit_login_method = RABBIT-CR-DEMO\n", "rabbit_login_method"),
    "a negative heartbeat": (
        "[oslo_messaging_rabbit]\nheartbeat_timeout_threshold = -1\n",
        "heartbeat_timeout_threshold"),
}


@pytest.mark.parametrize(("text", "message"), BAD.values(), ids=list(BAD))
@pytest.mark.parametrize("service", [consumer_config, agent_config], ids=["consumer", "agent"])
def test_a_bad_broker_option_stops_either_service_naming_it(load, text, message, service):
    with pytest.raises(ConfigError, match=message):
        load(text, service)


def test_a_mismatched_key_and_certificate_name_both_files(load, test_pki):
    cert, _ = test_pki.client_cert("compute-7")
    _, other_key = test_pki.client_cert("compute-8")
    with pytest.raises(ConfigError, match=r"ssl_cert_file '.*client-compute-7.pem' with "
                                          r"ssl_key_file '.*client-compute-8.key'"):
        load(f"[oslo_messaging_rabbit]\nssl = true\nssl_cert_file = {cert}\n"
             f"ssl_key_file = {other_key}\n")


def test_certificate_common_name(test_pki):
    cert, _ = test_pki.client_cert("lifecycle-compute-9")
    assert broker.certificate_common_name(str(cert)) == "lifecycle-compute-9"
    with pytest.raises(ValueError, match="not a readable PEM certificate"):
        broker.certificate_common_name("/etc/hostname")


def test_describe_names_the_broker_without_its_password():
    s = broker.plain("rabbit://lc-c1:s3cret@mq1:5671/prod")
    assert broker.describe(s, s.brokers[0]) == "amqp://lc-c1@mq1:5671/prod"


def test_the_rabbitmq_options_live_beside_the_code_that_reads_them():
    # broker.py declares [oslo_messaging_rabbit] and reads it; it needs nothing of
    # config.py (which imports it): no import circle.
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, lifecycle_common.broker; print(list(sys.modules))"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "lifecycle_common.config" not in imported
    for service in (agent_config, consumer_config):
        assert dict(service.list_opts())[broker.GROUP] is broker.RABBIT_OPTS
