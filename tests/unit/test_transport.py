"""transport_url (oslo.messaging syntax) -> brokers and virtual host."""

import pytest

from lifecycle_common.transport import Broker, TransportURLError, parse

# url -> (brokers, vhost)
VALID = {
    "rabbit://guest:guest@127.0.0.1:5672/": (
        [Broker("127.0.0.1", 5672, "guest", "guest")], ""),
    "rabbit://u:p@h1:5672,u2:p2@h2:5673/vh": (
        [Broker("h1", 5672, "u", "p"), Broker("h2", 5673, "u2", "p2")], "vh"),
    "rabbit://a:b@h1,a:b@h2:5674,a:b@h3/": (
        [Broker("h1", 5672, "a", "b"), Broker("h2", 5674, "a", "b"), Broker("h3", 5672, "a", "b")],
        ""),
    "rabbit://broker": (
        [Broker("broker", 5672, "", "")], ""),
    "rabbit://broker/": (
        [Broker("broker", 5672, "", "")], ""),
    "rabbit://user%40corp:p%3Aw%2Fd%40@broker/%2Fprod": (
        [Broker("broker", 5672, "user@corp", "p:w/d@")], "/prod"),
    "rabbit://u:p@h/a%20b": (
        [Broker("h", 5672, "u", "p")], "a b"),
    "rabbit://a:b@[::1]:5673/": (
        [Broker("::1", 5673, "a", "b")], ""),
    "rabbit://a:b@[fe80::1]/x": (
        [Broker("fe80::1", 5672, "a", "b")], "x"),
    "rabbit://a:b@[2001:db8::5]:5671,a:b@10.0.0.2/": (
        [Broker("2001:db8::5", 5671, "a", "b"), Broker("10.0.0.2", 5672, "a", "b")], ""),
    "amqp://u:p@h/v": ([Broker("h", 5672, "u", "p")], "v"),
    "kombu://u:p@h:1/": ([Broker("h", 1, "u", "p")], ""),
    "rabbit://u:p@h:65535/vh?amqp_durable_queues=true": (
        [Broker("h", 65535, "u", "p")], "vh"),
}

# url -> a fragment of the error
INVALID = {
    "http://h/": "scheme 'http' is not supported",
    "h:5672": "is not supported",
    "": "scheme '' is not supported",
    "rabbit://": "names no broker",
    "rabbit:///vh": "names no broker",
    "rabbit://u:p@/": "a broker has no host",
    "rabbit://:5672/": "a broker has no host",
    "rabbit://h:abc/": "bad port 'abc'",
    "rabbit://h:0/": "bad port '0'",
    "rabbit://h:65536/": "bad port '65536'",
    "rabbit://h:-1/": "bad port '-1'",
    "rabbit://[::1]:x/": "bad port 'x'",
    "rabbit://[::1/": "Invalid IPv6 URL",
}


@pytest.mark.parametrize("url", list(VALID))
def test_parse(url):
    brokers, vhost = VALID[url]
    assert parse(url) == (brokers, vhost)


@pytest.mark.parametrize("url", list(INVALID))
def test_invalid_urls_raise_transport_url_error(url):
    with pytest.raises(TransportURLError) as caught:
        parse(url)
    assert INVALID[url] in str(caught.value)
    assert "transport_url" in str(caught.value)


# Cross-checked with oslo.messaging: its rabbit driver accepts only rabbit:// URLs.
SAME_AS_OSLO = [url for url in VALID if url.startswith("rabbit://")]


@pytest.mark.parametrize("url", SAME_AS_OSLO)
def test_hosts_and_vhost_agree_with_oslo_messaging(url):
    import oslo_messaging
    from oslo_config import cfg

    theirs = oslo_messaging.TransportURL.parse(cfg.ConfigOpts(), url)
    brokers, vhost = parse(url)
    assert [(b.hostname, b.port, b.username, b.password) for b in brokers] == [
        (h.hostname, h.port or 5672, h.username or "", h.password or "") for h in theirs.hosts]
    assert vhost == (theirs.virtual_host or "")


def test_error_messages_never_show_passwords():
    with pytest.raises(TransportURLError) as err:
        parse("rabbit://user:s3cret@host1:5672,user:0ther@host2:99999/")
    assert "s3cret" not in str(err.value) and "0ther" not in str(err.value)
    assert "user:***@host1" in str(err.value)
