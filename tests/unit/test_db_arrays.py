"""The array parameters' faster ways give the bytes of the plain ones, whatever the values
(consumer.db.postgresql_pipeline: ``ascii_text_array_body``, ``int8_array``). That the
server reads them as psycopg's own adaptation is tests/integration/test_store_pipeline.py's."""

import random
import struct

import pytest

from consumer.db import postgresql_pipeline as pp

CHARACTERS = ["a", "Z", "0", "-", ".", "\x00", "\x7f", '"', "\\", ",", "é", "\x80", "日", "🚀"]


def text_cases():
    rng = random.Random(17)
    cases = [[], [None], [""], ["", ""], ["a", None], [None, "a"], ["x" * 1023],
             ["x" * 1024], ["x" * 1023, "y" * 1023], ["x" * 1024, "a", "a", "a"],
             ["é"], ["a", "é", "a", "a"], ["ok"] * 3,
             ["5b0e6f7c-8d9a-4b1c-9e2f-%012x" % i for i in range(500)],
             ["instance.suspended", "instance.resumed", "instance.stopped"] * 50,
             [f"compute-{i}" for i in range(20)] * 3]
    for _ in range(4000):
        alphabet = CHARACTERS[:rng.choice([3, 5, 7, len(CHARACTERS)])]
        pool = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
                for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.2:
            pool.append(None)
        cases.append([rng.choice(pool) for _ in range(rng.randint(0, 12))])
    return cases


def test_text_arrays_are_the_bytes_of_the_plain_encoding():
    for values in text_cases():
        assert pp.text_array(values) == pp.plain_text_array(values), values


@pytest.mark.parametrize("values", [
    ["5b0e6f7c-8d9a-4b1c-9e2f-%012x" % i for i in range(50)],   # one length
    ["instance.suspended", "instance.resumed"] * 10,              # few distinct
    [],
])
def test_the_usual_text_columns_take_the_ascii_way(values):
    assert pp.ascii_text_array_body(values) is not None


@pytest.mark.parametrize("values", [
    ["a", None], ["é", "é"], ["x" * 1024], [f"vm-{i}" for i in range(8, 12)],  # varied, distinct
])
def test_anything_else_is_left_to_the_plain_way(values):
    assert pp.ascii_text_array_body(values) is None


def test_a_lone_surrogate_is_refused_as_the_plain_way_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        pp.plain_text_array(["\udc80"])
    with pytest.raises(UnicodeEncodeError):
        pp.text_array(["\udc80"])


def interleaved_int8(values):
    """The int8[] encoding as it was: each element's length and value packed in turn."""
    header = pp._header(pp.Int8Array, values, False)
    return header + struct.pack("!" + "iq" * len(values), *[x for v in values for x in (8, v)])


@pytest.mark.parametrize("values", [[], [0], [1, -1, 2**63 - 1, -2**63, 1_700_000_000],
                                    list(range(-300, 300, 7))])
def test_int8_arrays_are_the_bytes_of_the_interleaved_packing(values):
    assert pp.int8_array(values) == interleaved_int8(values)


def test_an_int8_out_of_range_is_refused_as_before():
    for values in ([2**63], [-2**63 - 1]):
        with pytest.raises(struct.error):
            interleaved_int8(values)
        with pytest.raises(struct.error):
            pp.int8_array(values)
