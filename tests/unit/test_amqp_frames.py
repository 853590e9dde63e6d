"""The lean publish framing must write exactly what py-amqp writes."""

import types

import amqp
import pytest
from amqp import serialization
from amqp.method_framing import frame_writer

from lifecycle_common.amqp_frames import PublishFramer, short_string


def py_amqp_frames(channel: int, exchange: str, routing_key: str, mandatory: bool,
                   body: bytes, message_id, frame_max: int, user_id=None) -> bytes:
    written = []
    connection = types.SimpleNamespace(frame_max=frame_max, bytes_sent=0)
    transport = types.SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(connection, transport)
    properties = {"user_id": user_id} if user_id is not None else {}
    message = amqp.Message(body, content_type="application/json", content_encoding="utf-8",
                           delivery_mode=2, message_id=message_id, **properties)
    args = serialization.dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    write(1, channel, (60, 40), args, message)
    return b"".join(written)


@pytest.mark.parametrize("size", [0, 1, 900, 4088 - 200, 4088, 4089, 3 * 4088 + 17])
@pytest.mark.parametrize("message_id", [None, "outbox-42"])
@pytest.mark.parametrize("mandatory", [True, False])
@pytest.mark.parametrize("user_id", [None, "lifecycle-compute-1"])
def test_frames_match_py_amqp(size, message_id, mandatory, user_id):
    body = bytes(i % 251 for i in range(size))
    framer = PublishFramer(channel=3, exchange="nova", frame_max=4096, user_id=user_id)
    ours = framer.publish(body, "notifications.info", mandatory, message_id)
    assert ours == py_amqp_frames(3, "nova", "notifications.info", mandatory, body,
                                  message_id, 4096, user_id)


def test_frames_match_py_amqp_at_rabbitmq_default_frame_max():
    body = b'{"x": "' + b"\xc3\xa9" * 70000 + b'"}'
    framer = PublishFramer(channel=1, exchange="bé", frame_max=131072)
    ours = framer.publish(body, "versioned_notifications.info", True, "outbox-1")
    assert ours == py_amqp_frames(1, "bé", "versioned_notifications.info",
                                  True, body, "outbox-1", 131072)


def test_names_longer_than_a_short_string_are_refused():
    with pytest.raises(ValueError, match="255 bytes"):
        short_string("x" * 256)
    with pytest.raises(ValueError, match="minimum"):
        PublishFramer(channel=1, exchange="nova", frame_max=1024)
