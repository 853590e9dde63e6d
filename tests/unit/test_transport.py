"""transport_url (oslo.messaging syntax) -> brokers and virtual host."""

import pytest

from lifecycle_common.transport import Broker, TransportURLError, parse, redact

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


# Hostile URLs -> what redact() shows. Every password is built of pieces that start
# with "PW" and are split only by the characters a password may hold unescaped, so a
# leak of any piece of it shows "PW" in the output.
REDACTED = {
    # an unescaped '@' in a password: credentials end at the broker's last '@'
    "rabbit://user:PWa@PWb@host:5672/": "rabbit://user:***@host:5672/",
    "rabbit://u:PWa@PWb@h1,u2:PWc@PWd@h2/vh": "rabbit://u:***@h1,u2:***@h2/vh",
    "rabbit://u:PWa@@PWb@h/": "rabbit://u:***@h/",
    # characters that end urlsplit's netloc ('/', '?', '#') or split brokers (',')
    "rabbit://u:PWa/PWb@h:5672/vh": "rabbit://u:***@h:5672/vh",
    "rabbit://u:PWa?PWb@h/vh?ssl=1": "rabbit://u:***@h/vh?ssl=1",
    "rabbit://u:PWa#PWb@h/vh": "rabbit://u:***@h/vh",
    "rabbit://u:PWa,PWb@h/vh": "rabbit://u:***@h/vh",
    "rabbit://u:PWa,PWb@h1,u2:PWc,PWd@h2:5673/vh": "rabbit://u:***@h1,u2:***@h2:5673/vh",
    "rabbit://u:PWa/PWb?PWc#PWd,PWe@PWf@h/vh?ssl=1#x": "rabbit://u:***@h/vh?ssl=1#x",
    "rabbit://u:12,PW34@h/": "rabbit://u:***@h/",
    "rabbit://u:PWa:PWb@h/vh": "rabbit://u:***@h/vh",
    "rabbit://u:PWa[PWb@h/": "rabbit://u:***@h/",
    "rabbit://u:PWa[PWb]@h/": "rabbit://u:***@h/",
    "rabbit://u:PWa]@[::1]/": "rabbit://u:***@[::1]/",
    "rabbit://u:PWa\\PWb PWc@h/": "rabbit://u:***@h/",
    "rabbit://u:PWa\u2101PWb@h/": "rabbit://u:***@h/",
    # IPv6 hosts, several brokers, brokers without credentials, query strings
    "rabbit://u:PWa@[::1]:5672/?ssl=1": "rabbit://u:***@[::1]:5672/?ssl=1",
    "rabbit://u:PWa@[2001:db8::5]:5671,v:PWb@[fe80::1]/x":
        "rabbit://u:***@[2001:db8::5]:5671,v:***@[fe80::1]/x",
    "rabbit://u:PWa@h1:5672,h2:5673/vh?ssl=1": "rabbit://u:***@h1:5672,h2:5673/vh?ssl=1",
    "rabbit://u:PWa@h1,u2@h2,u3:PWb@h3/": "rabbit://u:***@h1,u2@h2,u3:***@h3/",
    "rabbit://h1,u:PWa@h2/": "rabbit://h1,u:***@h2/",
    "amqp://u:PWa%3APWb@h:5671/v%2Fh?ssl=1&login_method=PLAIN":
        "amqp://u:***@h:5671/v%2Fh?ssl=1&login_method=PLAIN",
    # percent-escapes, empty password, user without password, no credentials
    "rabbit://user%40corp:PWa%2FPWb%40@broker/%2Fprod": "rabbit://user%40corp:***@broker/%2Fprod",
    "rabbit://u:@h/": "rabbit://u:***@h/",
    "rabbit://u@h/": "rabbit://u@h/",
    "rabbit://h1:5672,h2/vh?ssl=1": "rabbit://h1:5672,h2/vh?ssl=1",
    "rabbit://": "rabbit://",
    "": "",
    # no scheme (or a broken one): the whole text is read as brokers
    "u:PWa@h": "u:***@h",
    "u:PWa://PWb@h": "u:***@h",
    "rabbit:/u:PWa@h/": "rabbit:***@h/",
    " rabbit://u:PWa@h/": " rabbit://u:***@h/",
    # ambiguous: hiding more rather than less
    "rabbit://u:PWa@h/v@x": "rabbit://u:***@x",
    "rabbit://h1:5672,u:PWa@h2/": "rabbit://h1:***@h2/",
    "rabbit://u:PWa@h1,h2:5673,u3:PWb@h3/": "rabbit://u:***@h1,h2:***@h3/",
    # the one shape read as two brokers, as parse() reads it: '@' then ',' in a password
    "rabbit://u:PWa@x,y@h/": "rabbit://u:***@x,y@h/",
}


@pytest.mark.parametrize("url", list(REDACTED))
def test_redact_hides_every_password_and_keeps_the_rest(url):
    assert redact(url) == REDACTED[url]
    assert "PW" not in redact(url)


@pytest.mark.parametrize("url", list(REDACTED))
def test_parse_errors_never_show_a_password(url):
    """parse() either reads the URL or says why with nothing of a password in it."""
    try:
        parse(url)
    except TransportURLError as exc:
        assert "PW" not in str(exc)


@pytest.mark.parametrize("url", [
    "rabbit://u:PWa/PWb@h/vh", "rabbit://u:PWa?PWb@h/vh", "rabbit://u:PWa#PWb@h/vh",
    "rabbit://u:PWa,PWb@h/vh"])
def test_a_password_cut_by_urlsplit_or_a_comma_is_a_bad_port_not_shown(url):
    # urlsplit ends the netloc at the first '/', '?' or '#', and brokers split at ','.
    # What is left before the cut reads as host "u" and port "PWa": an error, and the
    # port it names would be the start of the password.
    with pytest.raises(TransportURLError, match="bad port [(]not shown") as caught:
        parse(url)
    assert "PW" not in str(caught.value) and "u:***@h" in str(caught.value)


@pytest.mark.parametrize(("url", "detail"), [
    ("rabbit://u:PWa[PWb]@h/", "does not appear to be an IPv4 or IPv6 address"),
    ("rabbit://u:PWa\u2101PWb@h/", "invalid characters under NFKC normalization")])
def test_urlsplit_errors_are_shown_without_the_text_they_quote(url, detail):
    with pytest.raises(TransportURLError, match=detail) as caught:
        parse(url)
    assert "PW" not in str(caught.value)


def test_a_password_with_an_at_sign_parses_whole():
    assert parse("rabbit://u:PWa@PWb@h1,u2:c@d@h2:5673/vh") == (
        [Broker("h1", 5672, "u", "PWa@PWb"), Broker("h2", 5673, "u2", "c@d")], "vh")
