"""lifecycle_webhook.signing signs as Standard Webhooks says: the reference library
verifies each request with any one of the secrets in use, and rejects it when the body
or the timestamp is not what was signed; the secrets file is read strictly and
re-read when rotated."""

from __future__ import annotations

import base64
import datetime
import logging
import os
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from lifecycle_webhook import signing
from lifecycle_webhook.signing import SecretError, SecretFile

OLD = b"old secret, at least 24 bytes long"
NEW = b"the new secret, 32 bytes long!!!"
BODY = b'{"specversion":"1.0","id":"compute-01:1:2","data":{"x":"\xc3\xa9"}}'


def whsec(secret: bytes, padded: bool = True) -> str:
    encoded = base64.b64encode(secret).decode()
    return "whsec_" + (encoded if padded else encoded.rstrip("="))


def signed(secrets, body=BODY, msg_id="compute-01:1:2", timestamp=None):
    return signing.headers(secrets, msg_id, int(time.time()) if timestamp is None
                           else timestamp, body)


# -- signatures -------------------------------------------------------------------------

def test_the_reference_library_verifies_a_request_signed_with_one_secret():
    headers = signed((NEW,))
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "compute-01:1:2"
    assert Webhook(whsec(NEW)).verify(BODY, headers)["id"] == "compute-01:1:2"


def test_during_a_rotation_a_subscriber_holding_either_secret_verifies():
    headers = signed((OLD, NEW))
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(whsec(OLD)).verify(BODY, headers)
    Webhook(whsec(NEW)).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(b"someone else's secret entirely")).verify(BODY, headers)


def test_a_changed_body_fails_verification():
    headers = signed((OLD, NEW))
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(NEW)).verify(BODY.replace(b"compute-01", b"compute-02"), headers)


def test_a_changed_timestamp_fails_verification():
    headers = signed((NEW,))
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(NEW)).verify(BODY, headers)


def test_a_changed_id_fails_verification():
    headers = signed((NEW,))
    headers["webhook-id"] = "compute-01:1:3"
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(NEW)).verify(BODY, headers)


def test_a_stale_timestamp_is_refused_by_the_subscriber():
    # The timestamp is the moment of sending: a retry is signed anew.
    headers = signed((NEW,), timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(NEW)).verify(BODY, headers)


def test_signature_is_what_the_reference_library_computes():
    when = datetime.datetime(2026, 11, 25, 8, 54, 51, tzinfo=datetime.timezone.utc)
    expected = [Webhook(whsec(secret)).sign("msg_loFOjxBNrRLzqYUf", when, BODY)
                for secret in (OLD, NEW)]
    assert signing.signature((OLD, NEW), "msg_loFOjxBNrRLzqYUf", int(when.timestamp()),
                             BODY) == " ".join(expected)


# -- the secrets text -------------------------------------------------------------------

def test_parse_secrets_reads_one_secret_per_line_skipping_comments_and_blanks():
    text = (f"# rotated on 2026-12-01\n\n  {whsec(OLD)}  \n"
            f"{whsec(NEW, padded=False)}   # the new one\n")
    assert signing.parse_secrets(text) == (OLD, NEW)


@pytest.mark.parametrize("text, line", [
    ("", None),
    ("# only a comment\n\n", None),
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", 1),             # no prefix
    ("# ok\nwhsec_\n", 2),                                  # nothing after it
    (f"{whsec(OLD)}\nwhsec_MfKQ9r8G-KYqrTwjU\n", 2),         # URL-safe alphabet
    (f"{whsec(OLD)}\n\nwhsec_not base64 at all\n", 3),
    ("whsec_QUJD=RA==\n", 1),                               # '=' inside
    ("whsec_QUJDRA===\n", 1),                               # too much padding
    ("whsec_QUJDR\n", 1),                                   # impossible length
])
def test_parse_secrets_refuses_bad_text_naming_the_line_and_not_the_secret(text, line):
    with pytest.raises(SecretError) as caught:
        signing.parse_secrets(text)
    message = str(caught.value)
    if line is not None:
        assert message.startswith(f"line {line}:")
    assert "MfKQ9r8G" not in message and "QUJD" not in message


def test_secret_error_is_a_value_error():
    assert issubclass(SecretError, ValueError)


# -- the secrets file -------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def write(path, text):
    """Replace the file as an operator should: a complete new file renamed over it."""
    tmp = f"{path}.new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_secret_file_reads_the_secrets(tmp_path):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    assert SecretFile(str(path)).secrets() == (OLD,)


def test_secret_file_rotation_by_rewriting_the_file(tmp_path):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    clock = Clock()
    secrets = SecretFile(str(path), check_interval=2.0, clock=clock)
    write(path, f"{whsec(OLD)}\n{whsec(NEW)}\n")
    clock.now += 1.0
    assert secrets.secrets() == (OLD,)  # not looked at again before check_interval
    clock.now += 1.0
    assert secrets.secrets() == (OLD, NEW)
    headers = signed(secrets.secrets())
    Webhook(whsec(OLD)).verify(BODY, headers)
    Webhook(whsec(NEW)).verify(BODY, headers)
    write(path, f"{whsec(NEW)}\n")
    clock.now += 2.0
    assert secrets.secrets() == (NEW,)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(OLD)).verify(BODY, signed(secrets.secrets()))


def test_secret_file_rewritten_in_place_is_reread(tmp_path):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    clock = Clock()
    secrets = SecretFile(str(path), clock=clock)
    inode = os.stat(path).st_ino
    path.write_text(whsec(NEW) + "\n")
    assert os.stat(path).st_ino == inode
    clock.now += 2.0
    assert secrets.secrets() == (NEW,)


def test_invalid_new_content_keeps_the_last_good_secrets_and_logs_once(tmp_path, caplog):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    clock = Clock()
    secrets = SecretFile(str(path), clock=clock)
    caplog.set_level(logging.INFO, logger="lifecycle_webhook.signing")
    write(path, f"{whsec(NEW)}\nwhsec_MfKQ9r8G-KYqrTwjU\n")
    for _ in range(3):
        clock.now += 2.0
        assert secrets.secrets() == (OLD,)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "line 2" in errors[0].getMessage() and str(path) in errors[0].getMessage()
    assert "MfKQ9r8G" not in caplog.text
    assert base64.b64encode(NEW).decode() not in caplog.text
    # Another bad version: logged again, once.
    write(path, "nothing\n")
    clock.now += 2.0
    assert secrets.secrets() == (OLD,)
    clock.now += 2.0
    assert secrets.secrets() == (OLD,)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    # Fixed: used at once.
    write(path, whsec(NEW) + "\n")
    clock.now += 2.0
    assert secrets.secrets() == (NEW,)


def test_a_removed_file_keeps_the_last_good_secrets(tmp_path, caplog):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    clock = Clock()
    secrets = SecretFile(str(path), clock=clock)
    os.unlink(path)
    for _ in range(2):
        clock.now += 2.0
        assert secrets.secrets() == (OLD,)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    write(path, whsec(NEW) + "\n")
    clock.now += 2.0
    assert secrets.secrets() == (NEW,)


def test_secret_file_missing_at_start_is_an_error(tmp_path):
    with pytest.raises(SecretError, match="cannot read"):
        SecretFile(str(tmp_path / "absent"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_secret_file_unreadable_at_start_is_an_error(tmp_path):
    path = tmp_path / "secret"
    write(path, whsec(OLD) + "\n")
    path.chmod(0)
    with pytest.raises(SecretError, match="cannot read"):
        SecretFile(str(path))


@pytest.mark.parametrize("content", [b"", b"# nothing yet\n", b"whsec_!!\n", b"\xff\xfe\n"])
def test_secret_file_invalid_at_start_is_an_error(tmp_path, content):
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(SecretError) as caught:
        SecretFile(str(path))
    assert str(path) in str(caught.value)


def test_a_new_secret_is_one_the_file_and_the_standard_read():
    secret = signing.new_secret()
    assert signing.parse_secrets(secret + "\n") == (base64.b64decode(secret[6:]),)
    body = b'{"a": 1}'
    headers = signing.headers(signing.parse_secrets(secret), "id-1", int(time.time()), body)
    Webhook(secret).verify(body, headers)
    assert signing.new_secret() != secret
