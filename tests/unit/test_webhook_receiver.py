"""lab.webhook_receiver: the endpoint the webhook tests and the demo deliver to. Requests
are built here with the official SDKs (cloudevents, standardwebhooks), as a sender
independent of lifecycle_webhook would build them, and posted with http.client."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

from lab import waiting
from lab.certs import make_pki
from lab.webhook_receiver import (Receiver, SecretFile, SecretFileError, describe,
                                  parse_secret_text)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"the test receiver's first secret").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"the secret after the rotation").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a secret nobody gave the receiver").decode()
UUID = "0b5e1a52-7d1c-4a53-9b0e-3f1f3c1a2b01"
OCCURRED = dt.datetime(2026, 11, 25, 8, 54, 51, 373456, tzinfo=dt.timezone.utc)


def event(seq: int = 1, uuid: str = UUID, host: str = "compute-1", **extra) -> CloudEvent:
    attributes = {"specversion": "1.0", "id": f"{host}:7:{seq}",
                  "source": f"urn:libvirt-lifecycle:host:{host}",
                  "type": "io.libvirt-lifecycle.instance.started", "subject": uuid,
                  "time": OCCURRED, "datacontenttype": "application/json",
                  "sequence": f"{7:020d}-{seq:020d}", "partitionkey": uuid, **extra}
    return CloudEvent(attributes, {"lifecycle_object.name": "InstanceStartedPayload",
                                   "lifecycle_object.data": {"uuid": uuid, "seq": seq}})


def signed(ce: CloudEvent, mode: str = "structured", secrets=(SECRET,),
           timestamp: dt.datetime | None = None) -> tuple[dict[str, str], bytes]:
    message = to_structured_event(ce) if mode == "structured" else to_binary_event(ce)
    at = timestamp or dt.datetime.now(dt.timezone.utc)
    msg_id = ce.get_id()
    signature = " ".join(Webhook(s).sign(msg_id, at, message.body) for s in secrets)
    headers = {**message.headers, "webhook-id": msg_id,
               "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}
    return headers, message.body


def connect(receiver: Receiver, context: ssl.SSLContext | None = None,
            timeout: float = 5) -> http.client.HTTPConnection:
    if receiver.ssl_context is not None:
        return http.client.HTTPSConnection("localhost", receiver.port, timeout=timeout,
                                           context=context)
    return http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=timeout)


def post(receiver: Receiver, headers: dict[str, str], body: bytes, *, conn=None,
         path: str = "/", context=None) -> tuple[int, http.client.HTTPMessage, bytes]:
    own = conn is None
    conn = conn or connect(receiver, context)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        if own:
            conn.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def receiver():
    with Receiver(SECRET) as r:
        yield r


# -- verification ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_a_signed_cloudevent_is_accepted_and_recorded_with_every_attribute(receiver, mode):
    status, _, body = post(receiver, *signed(event(seq=3), mode))

    assert (status, body) == (200, b"accepted\n")
    [got] = receiver.requests()
    assert (got.id, got.type, got.source, got.subject) == (
        "compute-1:7:3", "io.libvirt-lifecycle.instance.started",
        "urn:libvirt-lifecycle:host:compute-1", UUID)
    assert (got.sequence, got.partitionkey) == (f"{7:020d}-{3:020d}", UUID)
    assert got.time == OCCURRED
    assert got.data["lifecycle_object.data"] == {"uuid": UUID, "seq": 3}
    assert (got.mode, got.status, got.signature_ok, got.error) == (mode, 200, True, "")
    assert got.webhook_id == "compute-1:7:3"
    assert got.at <= got.answered_at
    assert receiver.accepted_ids() == ["compute-1:7:3"]


def test_binary_header_values_are_percent_decoded(receiver):
    headers, body = signed(event(subject="a subject with spaces and % and \u00e9"), "binary")
    assert "%20" in headers["ce-subject"]

    assert post(receiver, headers, body)[0] == 200
    assert receiver.requests()[0].subject == "a subject with spaces and % and \u00e9"


@pytest.mark.parametrize("spoil", ["other secret", "body changed", "no signature",
                                   "timestamp changed", "too old"])
def test_a_request_that_fails_the_signature_is_answered_401(receiver, spoil):
    if spoil == "other secret":
        headers, body = signed(event(), secrets=(OTHER_SECRET,))
    elif spoil == "too old":
        headers, body = signed(event(), timestamp=dt.datetime.now(dt.timezone.utc)
                               - dt.timedelta(minutes=10))
    else:
        headers, body = signed(event())
        if spoil == "body changed":
            body = body.replace(b"compute-1", b"compute-2")
        elif spoil == "no signature":
            del headers["webhook-signature"]
        else:
            headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)

    status, _, answer = post(receiver, headers, body)

    assert status == 401
    assert answer.startswith(b"bad signature")
    [got] = receiver.requests()
    assert (got.status, got.signature_ok) == (401, False)
    assert got.error.startswith("bad signature")
    assert receiver.accepted() == []


def test_during_a_rotation_a_signature_by_any_of_the_secrets_is_good():
    with Receiver([SECRET, NEW_SECRET]) as receiver:
        assert post(receiver, *signed(event(1), secrets=(SECRET,)))[0] == 200
        assert post(receiver, *signed(event(2), secrets=(NEW_SECRET,)))[0] == 200
        assert post(receiver, *signed(event(3), secrets=(OTHER_SECRET, NEW_SECRET)))[0] == 200
        assert post(receiver, *signed(event(4), secrets=(OTHER_SECRET,)))[0] == 401
        receiver.set_secrets(NEW_SECRET)
        assert post(receiver, *signed(event(5), secrets=(SECRET,)))[0] == 401


@pytest.mark.parametrize("content_type, body, says", [
    ("application/json", b'{"id": "x"}', "not a CloudEvent: no ce- headers"),
    ("application/cloudevents+json", b'{"id": "x", "source": "s", "type": "t"}',
     "not a CloudEvent (structured)"),
    ("application/cloudevents+json", b'{"specversion": "1.0", "source": "s", "type": "t"}',
     "not a CloudEvent (structured): required attribute(s) id missing"),
    ("application/cloudevents+json", b'{not json', "not a CloudEvent (structured)"),
    ("application/cloudevents+json", b'[1]', "not a CloudEvent (structured)"),
])
def test_what_is_not_a_cloudevent_is_answered_400(receiver, content_type, body, says):
    msg_id, now = "m-1", dt.datetime.now(dt.timezone.utc)
    headers = {"content-type": content_type, "webhook-id": msg_id,
               "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign(msg_id, now, body)}

    status, _, answer = post(receiver, headers, body)

    assert status == 400
    assert says.encode() in answer
    [got] = receiver.requests()
    assert (got.status, got.signature_ok, got.id) == (400, True, None)
    assert got.error.startswith(says)


def test_a_time_not_sent_is_recorded_as_none_not_as_the_sdks_now(receiver):
    ce = event()
    attributes = {k: v for k, v in ce.get_attributes().items() if k != "time"}
    # the SDK puts a time into an event that has none: remove it from what is sent
    headers, body = signed(ce, "binary")
    del headers["ce-time"]
    at = dt.datetime.fromtimestamp(int(headers["webhook-timestamp"]), dt.timezone.utc)
    headers["webhook-signature"] = Webhook(SECRET).sign(headers["webhook-id"], at, body)

    assert post(receiver, headers, body)[0] == 200
    got = receiver.requests()[0]
    assert got.time is None and "time" not in got.attributes
    assert set(got.attributes) == set(attributes)


def test_a_binary_event_without_its_required_attributes_is_answered_400(receiver):
    headers, body = signed(event(), "binary")
    del headers["ce-source"]
    headers["webhook-signature"] = Webhook(SECRET).sign(
        headers["webhook-id"], dt.datetime.fromtimestamp(int(headers["webhook-timestamp"]),
                                                         dt.timezone.utc), body)

    assert post(receiver, headers, body)[0] == 400
    assert "source" in receiver.requests()[0].error


def test_only_the_given_path_is_an_endpoint():
    with Receiver(SECRET, path="/hooks/lifecycle?tenant=a") as receiver:
        assert receiver.url == f"http://127.0.0.1:{receiver.port}/hooks/lifecycle?tenant=a"
        assert post(receiver, *signed(event(1)), path="/hooks/lifecycle")[0] == 404
        assert post(receiver, *signed(event(2)), path="/hooks/lifecycle?tenant=a")[0] == 200
        assert [r.path for r in receiver.requests()] == [
            "/hooks/lifecycle", "/hooks/lifecycle?tenant=a"]


# -- behaviours ------------------------------------------------------------------------

def test_fail_first_answers_the_first_n_requests_then_accepts(receiver):
    receiver.fail_first(2, retry_after=7)
    answers = [post(receiver, *signed(event(seq))) for seq in (1, 1, 1)]

    assert [status for status, _, _ in answers] == [503, 503, 200]
    assert [headers.get("Retry-After") for _, headers, _ in answers] == ["7", "7", None]
    assert receiver.statuses() == {503: 2, 200: 1}
    assert receiver.accepted_ids() == ["compute-1:7:1"]
    assert all(r.signature_ok for r in receiver.requests())


def test_fail_first_at_construction_with_another_status_and_no_retry_after():
    with Receiver(SECRET, fail_first=1, fail_status=429) as receiver:
        status, headers, _ = post(receiver, *signed(event()))
        assert (status, headers.get("Retry-After")) == (429, None)
        assert post(receiver, *signed(event()))[0] == 200


def test_refuse_answers_the_events_a_predicate_picks(receiver):
    receiver.refuse(lambda e: e.id == "compute-1:7:2", status=422, body="no thanks")

    answers = [post(receiver, *signed(event(seq))) for seq in (1, 2, 3)]

    assert [(s, b) for s, _, b in answers] == [
        (200, b"accepted\n"), (422, b"no thanks\n"), (200, b"accepted\n")]
    assert receiver.accepted_ids() == ["compute-1:7:1", "compute-1:7:3"]
    assert receiver.requests()[1].error == "no thanks"
    receiver.reset()
    assert post(receiver, *signed(event(2)))[0] == 200


def test_behaviours_compose_fail_first_comes_before_a_refusal(receiver):
    receiver.refuse(lambda e: e.sequence.endswith("2"))
    receiver.fail_first(1)
    assert [post(receiver, *signed(event(2)))[0] for _ in range(2)] == [503, 400]


def test_delay_answers_no_sooner_than_asked(receiver):
    receiver.delay(0.3)
    started = time.monotonic()

    assert post(receiver, *signed(event()))[0] == 200

    assert time.monotonic() - started >= 0.3
    got = receiver.requests()[0]
    assert got.answered_at - got.at >= 0.3


def test_a_delayed_event_holds_back_only_itself_and_stop_drops_it():
    receiver = Receiver(SECRET).start()
    receiver.delay(60, when=lambda e: e.partitionkey == "slow")
    outcome = []

    def post_slow():
        try:
            outcome.append(post(receiver, *signed(event(1, uuid="slow")))[0])
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(type(exc))
    slow = threading.Thread(target=post_slow)
    slow.start()
    try:
        receiver.wait_for(lambda: receiver.pending() == 1, timeout=5)

        assert post(receiver, *signed(event(1, uuid="fast")))[0] == 200
        assert receiver.accepted_ids() == ["compute-1:7:1"]
        assert receiver.accepted()[0].partitionkey == "fast"
        # (the fast one leaves pending just after its answer is written)
        receiver.wait_for(lambda: receiver.pending() == 1, timeout=5)
    finally:
        started = time.monotonic()
        receiver.stop()
        slow.join(timeout=5)
    assert time.monotonic() - started < 5
    assert outcome and outcome[0] != 200   # cut, never answered
    assert [r.partitionkey for r in receiver.requests()] == ["fast"]


def test_keep_alive_serves_several_requests_on_one_connection(receiver):
    conn = connect(receiver)
    try:
        assert post(receiver, *signed(event(1)), conn=conn)[0] == 200
        sock = conn.sock
        assert post(receiver, *signed(event(2)), conn=conn)[0] == 200
        assert conn.sock is sock and sock is not None
    finally:
        conn.close()


def test_close_connections_answers_with_connection_close(receiver):
    receiver.close_connections()
    conn = connect(receiver)
    try:
        status, headers, _ = post(receiver, *signed(event()), conn=conn)
        assert (status, headers["Connection"]) == (200, "close")
        assert conn.sock is None   # http.client closed it as told
    finally:
        conn.close()


def test_accept_with_204_sends_no_body(receiver):
    receiver.accept_with(204)
    status, headers, body = post(receiver, *signed(event()))
    assert (status, body, headers.get("Content-Length")) == (204, b"", None)
    assert receiver.accepted_ids() == ["compute-1:7:1"]


# -- down and up -----------------------------------------------------------------------

def test_down_refuses_connections_and_cuts_open_ones_then_up_on_the_same_port(receiver):
    port = receiver.port
    conn = connect(receiver)
    try:
        assert post(receiver, *signed(event(1)), conn=conn)[0] == 200

        receiver.go_down()

        assert not receiver.is_up
        assert refused(port)
        with pytest.raises((OSError, http.client.HTTPException)):
            post(receiver, *signed(event(2)), conn=conn)
    finally:
        conn.close()
    receiver.start()
    assert receiver.port == port
    assert post(receiver, *signed(event(2)))[0] == 200
    assert receiver.accepted_ids() == ["compute-1:7:1", "compute-1:7:2"]


def test_down_until_comes_back_by_itself_on_the_same_port_not_sooner(receiver):
    port = receiver.port
    back_at = time.monotonic() + 0.3
    receiver.down_until(back_at)
    assert refused(port)

    waiting.wait_for(lambda: not refused(port), timeout=5, message="the port listening")

    assert time.monotonic() >= back_at
    assert receiver.port == port and receiver.is_up
    assert post(receiver, *signed(event()))[0] == 200


def test_start_later_takes_the_port_at_once_and_listens_after_the_delay():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with Receiver.start_later(SECRET, 0.3, port=port) as receiver:
        assert receiver.port == port
        assert not receiver.is_up and refused(port)
        receiver.wait_up(timeout=5)
        assert time.monotonic() - started >= 0.3
        assert post(receiver, *signed(event()))[0] == 200


def test_stop_is_idempotent_and_start_takes_the_same_port_again():
    receiver = Receiver(SECRET).start()
    port = receiver.port
    receiver.stop()
    receiver.stop()
    assert refused(port)
    receiver.start()
    try:
        assert receiver.port == port
        assert post(receiver, *signed(event()))[0] == 200
    finally:
        receiver.stop()


def test_start_cancels_a_pending_come_back(receiver):
    come_back = time.monotonic() + 0.1
    receiver.down_until(come_back)
    receiver.start()
    receiver.go_down()
    # nothing to wait on but the moment it would have come back at, and a margin
    waiting.wait_for(lambda: time.monotonic() > come_back + 0.2, timeout=2)
    assert refused(receiver.port) and not receiver.is_up


# -- TLS ---------------------------------------------------------------------------------

def test_tls_with_the_lab_certificates(tmp_path):
    pki = make_pki(tmp_path)
    trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
    with Receiver(SECRET, certfile=str(pki.server_cert), keyfile=str(pki.server_key)) as r:
        assert r.url == f"https://localhost:{r.port}/"

        assert post(r, *signed(event()), context=trusted)[0] == 200

        untrusted = ssl.create_default_context(cafile=str(pki.other_ca_cert))
        with pytest.raises(ssl.SSLCertVerificationError):
            post(r, *signed(event(2)), context=untrusted)
        r.wait_for(lambda: r.tls_errors, timeout=5)
        assert r.accepted_ids() == ["compute-1:7:1"]


def test_tls_connections_are_cut_when_it_goes_down(tmp_path):
    pki = make_pki(tmp_path)
    trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
    with Receiver(SECRET, certfile=str(pki.server_cert), keyfile=str(pki.server_key)) as r:
        conn = connect(r, trusted)
        try:
            assert post(r, *signed(event(1)), conn=conn)[0] == 200
            r.down_for(0.2)
            with pytest.raises((OSError, http.client.HTTPException)):
                post(r, *signed(event(2)), conn=conn)
        finally:
            conn.close()
        r.wait_up(timeout=5)
        assert post(r, *signed(event(2)), context=trusted)[0] == 200


# -- helpers for the tests ---------------------------------------------------------------

def test_order_by_partition_lists_sequences_in_order_of_acceptance(receiver):
    for seq, uuid in [(1, "a"), (1, "b"), (2, "a"), (3, "a"), (2, "b")]:
        assert post(receiver, *signed(event(seq, uuid=uuid)))[0] == 200
    receiver.refuse(lambda e: True)
    assert post(receiver, *signed(event(4, uuid="a")))[0] == 400

    order = receiver.order_by_partition()

    assert order == {"a": [f"{7:020d}-{s:020d}" for s in (1, 2, 3)],
                     "b": [f"{7:020d}-{s:020d}" for s in (1, 2)]}
    assert receiver.partition_overlaps() == []


def test_partition_overlaps_names_two_events_of_a_partition_in_flight_at_once(receiver):
    receiver.hold(when=lambda e: e.sequence.endswith("1"))
    answers = []
    first = threading.Thread(target=lambda: answers.append(
        post(receiver, *signed(event(1)))[0]))
    first.start()
    receiver.wait_for(lambda: receiver.pending() == 1, timeout=5)
    assert post(receiver, *signed(event(2)))[0] == 200
    assert answers == []
    receiver.release()
    first.join(timeout=5)
    assert answers == [200]

    [(earlier, later)] = receiver.partition_overlaps()

    assert (earlier.id, later.id) == ("compute-1:7:1", "compute-1:7:2")
    assert receiver.order_by_partition() == {UUID: [f"{7:020d}-{s:020d}" for s in (2, 1)]}


def test_wait_for_a_count_returns_the_accepted_and_times_out_saying_what_it_got(receiver):
    receiver.fail_first(1)
    threading.Thread(target=lambda: [post(receiver, *signed(event(s))) for s in (1, 2)],
                     daemon=True).start()

    accepted = receiver.wait_for(1, timeout=5)
    assert [r.id for r in accepted] == ["compute-1:7:2"]
    with pytest.raises(TimeoutError, match=r"waiting for 2 accepted requests at http://"
                                           r".*1 accepted; statuses \{200: 1, 503: 1\}"):
        receiver.wait_for(2, timeout=0.05)


def test_wait_for_ids_names_the_missing_ones(receiver):
    post(receiver, *signed(event(1)))
    assert [r.id for r in receiver.wait_for_ids(["compute-1:7:1"], timeout=5)] == [
        "compute-1:7:1"]
    with pytest.raises(TimeoutError, match=r"1 missing \(compute-1:7:9\)"):
        receiver.wait_for_ids(["compute-1:7:1", "compute-1:7:9"], timeout=0.05)


def test_other_methods_than_post_get_405(receiver):
    conn = connect(receiver)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.headers["Allow"]) == (405, "POST")
        response.read()
    finally:
        conn.close()
    assert receiver.requests() == []


# -- secrets and the demo's script -------------------------------------------------------

def test_secret_text_takes_one_secret_a_line_with_comments():
    text = f"# rotated on Monday\n\n{SECRET}  # old\n  {NEW_SECRET}\n"
    assert parse_secret_text(text) == [SECRET, NEW_SECRET]
    with pytest.raises(SecretFileError, match=r"^line 2: not a whsec_ secret$"):
        parse_secret_text(f"{SECRET}\nsecret\n")
    with pytest.raises(SecretFileError, match=r"^line 1: not base64"):
        parse_secret_text("whsec_!!!\n")
    with pytest.raises(SecretFileError, match="no secret"):
        parse_secret_text("# nothing\n")


def test_a_secret_file_is_read_again_when_rewritten_and_a_bad_version_ignored(tmp_path):
    path = tmp_path / "secret"
    path.write_text(f"{SECRET}\n")
    secrets = SecretFile(path)
    with Receiver(secrets) as receiver:
        assert post(receiver, *signed(event(1), secrets=(NEW_SECRET,)))[0] == 401
        path.write_text(f"{SECRET}\n{NEW_SECRET}\n")
        assert post(receiver, *signed(event(2), secrets=(NEW_SECRET,)))[0] == 200
        path.write_text("garbage\n")
        assert secrets() == [SECRET, NEW_SECRET]


def test_describe_says_type_subject_sequence_signature_and_answer(receiver):
    post(receiver, *signed(event(12)))
    post(receiver, *signed(event(13), secrets=(OTHER_SECRET,)))
    good, bad = (describe(r) for r in receiver.requests())
    assert " instance.started " in good and UUID in good
    assert "seq 7-12 " in good and "sig ok" in good and good.endswith("-> 200")
    assert "sig BAD" in bad and "-> 401 (bad signature" in bad


def test_the_script_prints_a_line_per_request_and_ends_on_sigterm(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"# demo\n{SECRET}\n")
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "lab.webhook_receiver", "--port", "0",
             "--secret-file", str(secret_file)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()

    def line(n: int) -> str:
        waiting.wait_for(lambda: len(lines) > n or not reader.is_alive(), timeout=10,
                         message=f"line {n + 1} of the script's output")
        assert len(lines) > n, f"the script ended: {errors.read_text()}"
        return lines[n]
    try:
        first = line(0)
        assert first.startswith("listening on http://127.0.0.1:")
        port = int(first.rsplit(":", 1)[1].rstrip("/\n"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers, body = signed(event(5))
        conn.request("POST", "/", body=body, headers=headers)
        assert conn.getresponse().status == 200
        conn.close()
        printed = line(1)
        assert "instance.started" in printed and UUID in printed and "seq 7-5" in printed
        assert "sig ok" in printed and printed.rstrip().endswith("-> 200")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert line(2) == "stopped\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
