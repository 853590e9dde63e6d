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


def timestamp_cases():
    import datetime
    rng = random.Random(23)
    low, high = datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)
    utc = datetime.timezone.utc
    moments = [low, high, datetime.datetime(2000, 1, 1),
               datetime.datetime(1999, 12, 31, 23, 59, 59, 999999),
               datetime.datetime(1970, 1, 1), datetime.datetime(2026, 12, 7, 0, 10, 47, 123456)]
    moments += [low + datetime.timedelta(microseconds=rng.randrange(
        int((high - low) / datetime.timedelta(microseconds=1)))) for _ in range(300)]
    cases = [[], [None], moments, [moments[3], None], [moments[5].replace(tzinfo=utc)],
             [m.replace(tzinfo=utc) for m in moments[2:]], [None, moments[3]],
             [moments[5], moments[5].replace(tzinfo=utc)],
             [moments[5].replace(tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))]]
    cases += [rng.sample(moments, rng.randint(1, 9)) for _ in range(200)]
    return cases


def test_timestamp_arrays_are_the_bytes_of_the_plain_packing():
    for values in timestamp_cases():
        assert pp.timestamp_array(values) == pp.plain_timestamp_array(values), values


def test_timestamps_of_one_kind_take_the_one_division_way_and_anything_else_the_plain_one():
    import datetime
    naive = [datetime.datetime(2026, 12, 7, 0, 10, 47, i) for i in range(5)]
    aware = [moment.replace(tzinfo=datetime.timezone.utc) for moment in naive]
    assert pp.one_kind_timestamp_array_body(naive) is not None
    assert pp.one_kind_timestamp_array_body(aware) is not None
    assert pp.one_kind_timestamp_array_body([]) is None
    assert pp.one_kind_timestamp_array_body(naive + [None]) is None
    assert pp.one_kind_timestamp_array_body([None] + naive) is None
    assert pp.one_kind_timestamp_array_body(naive + aware[:1]) is None
    assert pp.one_kind_timestamp_array_body(aware + naive[:1]) is None


def test_columns_are_the_fields_column_by_column():
    from consumer.apply_rules import InstanceRow
    import datetime
    at = datetime.datetime(2026, 12, 7)
    rows = [InstanceRow(f"u{i}", "vm", "h", "running", i % 2 == 0, 1, i, "instance.started", at)
            for i in range(7)]
    assert pp.columns(rows, 12) == tuple(tuple(r[i] for r in rows) for i in range(12))
    assert pp.columns([], 9) == ((),) * 9
