import os
import uuid

from lifecycle_common.wire.message_ids import (RandomIds, _uuid4_strings,
                                               _uuid4_strings_plain, new_message_id)


def test_ids_are_version_4_uuids_in_canonical_form():
    ids = RandomIds(batch=8)
    for _ in range(100):  # across several refills
        value = ids()
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat():
    ids = RandomIds(batch=16)
    drawn = [ids() for _ in range(10_000)]
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_does_not_hand_out_the_parents_pooled_ids():
    new_message_id()  # the pool now holds ids the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(300)]
    assert child not in parent


def test_the_batched_ids_are_the_plain_ones_and_uuid_modules():
    for raw in (os.urandom(16 * 256), bytes(16 * 3), b"\xff" * 16 * 5, os.urandom(16)):
        batched = _uuid4_strings(raw)
        assert batched == _uuid4_strings_plain(raw)
        assert batched == [str(uuid.UUID(bytes=raw[i:i + 16], version=4))
                           for i in range(0, len(raw), 16)]
