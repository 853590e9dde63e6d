"""Hostile input, generated: no message, of any content, stops the consumer or changes
what it should not. Property-based (hypothesis) on SQLite, PostgreSQL and MariaDB;
payloads are drawn from the current JSON Schemas themselves (``from_schema``).

Each case is a batch of two messages through ``ConsumerService.handle_batch`` with the
real store on a real database: a hostile one (a payload the current schema accepts, or
one mutated into near-validity, or bytes), then a good event of a host of its own. The
properties: handling returns; the batch is acked; the hostile message is applied (its
key journaled, or its heartbeat recorded) or dead-lettered with a reason, and is never
refused by the database nor by an exception of the store (what the schema accepts,
every backend stores); the good event is applied.

The queue is an in-memory stand-in that keeps the broker-facing contract the service
uses (``ack``, ``dead_letter``, ``keepalive``, and ``dead_letters`` as the metrics
read it): each dead letter is confirmed at once, and its original acked then. ``LIFECYCLE_FUZZ_EXAMPLES`` sets the
number of cases per backend (default 300); runs are derandomized, so CI tries the
same cases every time, and a larger count explores further.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import time
import types
import uuid
from collections import Counter

import amqp
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import admission
from consumer.db.tables import hosts, instances, journal
from consumer.service import ConsumerService
from consumer.store import Store
from lifecycle_common import broker, timeutil, wire
from lifecycle_common.wire import payloads, schemas, vocabulary
from lifecycle_common.wire.vocabulary import Transition
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import Event, StartedDetail

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("LIFECYCLE_FUZZ_EXAMPLES", "300"))
KEY = payloads.OBJECT_KEY
COUNTS: dict[str, Counter] = {}  # backend -> outcome -> cases, printed at the end


class RecordingQueue:
    """The part of BatchQueue the service settles a batch with, in memory."""

    def __init__(self):
        self.acked: list[amqp.Message] = []
        self.dead: dict[int, str] = {}  # id(message) -> reason
        # The dead letters' connection as metrics and health read it: never blocked.
        self.dead_letters = types.SimpleNamespace(held=0, down_since=None,
                                                  blocked=broker.BlockedState())

    def ack(self, messages):
        assert not {id(m) for m in messages} & set(self.dead), "a held message acked"
        self.acked.extend(messages)

    def dead_letter(self, message, reason, cause, on_done=None):
        assert isinstance(reason, str) and reason, "a dead letter without a reason"
        assert cause in {c.value for c in admission.Cause}, cause
        self.dead[id(message)] = reason
        self.acked.append(message)  # its copy confirmed: the original is acked
        if on_done is not None:
            on_done()

    def acked_once(self, messages) -> bool:
        """Whether exactly ``messages`` were acked, each once (in any order)."""
        return Counter(map(id, self.acked)) == Counter(map(id, messages))

    def keepalive(self):
        pass


# -- what the hostile message is made of ---------------------------------------------

def _schema(cls) -> dict:
    return json.loads((schemas.SCHEMA_DIR / f"{cls.NAME}.{cls.VERSION}.json").read_text())


NOW = time.time()
_offsets = st.sampled_from([datetime.timezone.utc,
                            datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
                            datetime.timezone(datetime.timedelta(hours=-11))])
# Timestamps the wire accepts, mostly near now (so that they pass the clock rule too).
wire_timestamps = st.one_of(
    st.floats(NOW - 86400 * 30, NOW + 60).map(timeutil.isoformat_epoch),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(),
              st.datetimes(datetime.datetime(1970, 1, 2), datetime.datetime(9999, 12, 30)),
              _offsets))


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values the (sub)schema accepts. It knows what the payload schemas use: enum,
    string (pattern, length, format date-time), integer and number (bounds), boolean,
    null, arrays of objects, objects whose properties are all required."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if len(kinds) > 1:
        return st.one_of([from_schema({**schema, "type": k}) for k in kinds])
    kind = kinds[0]
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("exclusiveMinimum", schema.get("minimum"))
        return st.floats(low, schema.get("maximum"), exclude_min="exclusiveMinimum" in schema,
                         allow_nan=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return wire_timestamps
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= (high or len(s)))
        return st.text(min_size=low, max_size=high)
    if kind == "array":
        return st.lists(from_schema(schema["items"]), max_size=min(schema.get("maxItems", 5), 5))
    if kind == "object":
        return st.fixed_dictionaries({k: from_schema(v) for k, v in schema["properties"].items()})
    raise ValueError(f"no strategy for {schema}")


valid_data = {cls: from_schema(_schema(cls)) for cls in payloads.PAYLOAD_CLASSES}
# The event type each payload class (but the lifecycle one's, by transition) goes with.
EVENT_TYPE_OF = {payloads.HostInventoryPayload: vocabulary.INVENTORY,
                 payloads.HostHeartbeatPayload: vocabulary.HEARTBEAT,
                 **{cls: fault.event_type for fault, cls in payloads.FAULT_PAYLOADS.items()}}

HOSTILE_VALUES = st.one_of(
    st.text(max_size=20),
    st.text(max_size=20).map(lambda s: s + "\x00" + s),
    st.integers(256, 300_000).map(lambda n: "x" * n),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(), st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["yesterday", "2026-12-31T23:59:60+00:00", "0001-01-01T00:00:00+00:00",
                     "9999-12-31T23:59:59-01:00", "2026-11-25T08:54:44", "compute-1\n",
                     "2026-11-25T08:54:44.123456+00:00", "ＡＢＣ", "🚀🚀", " ", ""]),
)


# Values one step beyond what the schema allows, by the type of the value they replace.
NEAR_STRING_VALUES = [
    "\x00", "vm\x00", "compute-1\n", "x" * 255, "x" * 256, "h" * 300, "yesterday",
    "2026-12-31T23:59:60+00:00", "2026-11-25T08:54:44", "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59-01:00", "🚀" * 255, "🚀" * 256, "Compute-1", " compute-1", "\u202e",
    "'; DROP TABLE hosts; --", "x" * 300_000]
NEAR_INTEGER_VALUES = [2**63 - 1, 2**63, 2**64, -1, 0, 2**31 - 1, 2**31, 10**30, 7.0, 7.5, True]
NEAR_STRINGS = st.one_of(st.sampled_from(NEAR_STRING_VALUES), st.text(max_size=30))
NEAR_INTEGERS = st.one_of(st.sampled_from(NEAR_INTEGER_VALUES), st.integers())
STORED_FIELDS = ("host", "name", "uuid", "occurred_at", "epoch", "seq", "last_seq")


def near_value(value) -> st.SearchStrategy:
    if isinstance(value, str):
        return st.one_of(NEAR_STRINGS, HOSTILE_VALUES)
    if isinstance(value, int) and not isinstance(value, bool):
        return st.one_of(NEAR_INTEGERS, HOSTILE_VALUES)
    return HOSTILE_VALUES


@st.composite
def plausible_epochs(draw):
    """Epochs as agents make them (their start time), or anything the schema allows."""
    return draw(st.one_of(st.integers(int(NOW) - 86400 * 365, int(NOW) + 60),
                          st.integers(int(NOW) - 86400 * 365, int(NOW) + 60),
                          st.integers(0, 2**63 - 1)))


@st.composite
def valid_messages(draw) -> dict:
    """An oslo message (a dict) whose payload the current schema accepts, with an epoch
    as agents make them more often than not."""
    cls = draw(st.sampled_from(payloads.PAYLOAD_CLASSES))
    data = draw(valid_data[cls])
    data["epoch"] = draw(plausible_epochs())
    if cls is payloads.InstanceLifecyclePayload:
        event_type = Transition(data["transition"]).event_type
    else:
        event_type = EVENT_TYPE_OF[cls]
    return {
        "message_id": str(uuid.uuid4()), "publisher_id": f"lifecycle-agent:{data['host']}",
        "event_type": event_type, "priority": "INFO", "timestamp": "2026-12-02 00:00:00",
        "payload": {f"{KEY}.name": cls.NAME, f"{KEY}.namespace": payloads.NAMESPACE,
                    f"{KEY}.version": cls.VERSION, f"{KEY}.data": data},
    }


@st.composite
def mutated_messages(draw) -> dict:
    """A valid message that one mutation took into near-validity: a field (most often
    one the database stores) replaced by a value one step beyond the schema, a field
    dropped or added, the envelope changed, an inventory entry changed."""
    message = draw(valid_messages())
    data = message["payload"][f"{KEY}.data"]
    mutation = draw(st.sampled_from(["field", "field", "field", "drop", "extra", "envelope",
                                     "entry"]))
    if mutation == "field":
        stored = [k for k in STORED_FIELDS if k in data]
        field = draw(st.one_of(st.sampled_from(stored), st.sampled_from(sorted(data))))
        data[field] = draw(near_value(data[field]))
    elif mutation == "drop":
        del data[draw(st.sampled_from(sorted(data)))]
    elif mutation == "extra":
        data[draw(st.text(min_size=1, max_size=10))] = draw(HOSTILE_VALUES)
    elif mutation == "envelope":
        where = draw(st.sampled_from(["event_type", "publisher_id", "payload", "version",
                                      "name", "message_id"]))
        if where in ("version", "name"):
            message["payload"][f"{KEY}.{where}"] = draw(HOSTILE_VALUES)
        else:
            message[where] = draw(HOSTILE_VALUES)
    elif mutation == "entry" and data.get("instances"):
        entry = draw(st.sampled_from(data["instances"]))
        field = draw(st.sampled_from(sorted(entry)))
        entry[field] = draw(near_value(entry[field]))
    return message


def _envelope(message: dict) -> bytes:
    inner = json.dumps(message)
    return json.dumps({"oslo.version": "2.0", "oslo.message": inner}).encode()


valid_bodies = valid_messages().map(_envelope)
hostile_bodies = st.one_of(
    mutated_messages().map(_envelope),
    mutated_messages().map(_envelope),
    mutated_messages().map(_envelope),
    st.binary(max_size=64),
    mutated_messages().map(lambda m: json.dumps({"oslo.version": "2.0", "oslo.message": m})
                           .encode()),
    st.builds(lambda v: json.dumps({"oslo.version": "2.0", "oslo.message": v}).encode(),
              HOSTILE_VALUES),
)


# -- the property ---------------------------------------------------------------------

def _good_event(host: str, seq: int) -> tuple[bytes, str]:
    vm = str(uuid.uuid4())
    return wire.encode(notifications.instance_notification(host, int(NOW) - 10, DomainEvent(
        seq=seq, occurred_at=time.time(), uuid=vm, name=f"good-{seq}",
        event=int(Event.STARTED), detail=int(StartedDetail.BOOTED)))), vm


def _journaled(engine, key) -> bool:
    host, epoch, seq = key
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(journal).where(
            journal.c.host == host, journal.c.epoch == epoch, journal.c.seq == seq)).scalar() == 1


def _host_known(engine, host) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(hosts.c.name).where(hosts.c.name == host)).first() is not None


def _power_state(engine, vm) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(instances.c.power_state)
                            .where(instances.c.uuid == vm)).scalar()


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture])


class Harness:
    """One database; each case is a batch of [message, a good event of its own host]."""

    def __init__(self, engine, label: str):
        self.engine = engine
        self.counts = COUNTS.setdefault(f"{label} on {engine.dialect.name}", Counter())
        self.good_host = f"good-{uuid.uuid4().hex}"  # no generated host is this one
        self._seqs = iter(range(1, 10**9))

    def settle_many(self, bodies: list[bytes], policy: admission.Policy) -> None:
        """As ``settle``, for many messages in one batch (published by their hosts)."""
        messages = []
        for body in bodies:
            try:
                user = wire.decode(body).payload.host
            except wire.WireError:
                user = None
            messages.append(amqp.Message(body, **({"user_id": user} if user else {})))
        good_body, vm = _good_event(self.good_host, next(self._seqs))
        good = amqp.Message(good_body, user_id=self.good_host)
        queue = RecordingQueue()
        service = ConsumerService(queue, Store(self.engine), host_down_after=60.0,
                                  retry_max=0.1, policy=policy)

        service.handle_batch(messages + [good])

        assert queue.acked_once(messages + [good])
        assert id(good) not in queue.dead and _power_state(self.engine, vm) == "running"
        assert not (service.dead_letters[admission.Cause.DATABASE]
                    or service.dead_letters[admission.Cause.APPLY]), queue.dead
        for message in messages:
            verdict = admission.admit(message.body, message.properties.get("user_id"),
                                      time.time(), policy)
            if id(message) in queue.dead:
                assert not isinstance(verdict, admission.Admitted)
                self.counts[f"dead-lettered ({getattr(verdict, 'cause', '?').value})"] += 1
            elif isinstance(verdict, admission.Admitted):
                p = verdict.note.payload
                if isinstance(p, payloads.HostHeartbeatPayload):
                    assert _host_known(self.engine, p.host)
                else:
                    assert _journaled(self.engine, (p.host, p.epoch, p.seq)), verdict
                self.counts[f"applied ({verdict.note.event_type.split('.')[0]})"] += 1
            else:
                assert isinstance(verdict, admission.Foreign)
                self.counts["foreign, acked"] += 1

    def settle(self, body, policy: admission.Policy, user) -> tuple[admission.Verdict, str | None]:
        """Handle the batch; check what must hold for every message; return what the
        consumer's admission says of ``body`` and the dead letter's cause, if any."""
        if user == "host":  # the host's own user, which passes host_user
            try:
                user = wire.decode(body).payload.host
            except wire.WireError:
                pass
        message = amqp.Message(body, **({"user_id": user} if user is not None else {}))
        good_body, vm = _good_event(self.good_host, next(self._seqs))
        good = amqp.Message(good_body, user_id=self.good_host)
        queue = RecordingQueue()
        service = ConsumerService(queue, Store(self.engine), host_down_after=60.0,
                                  retry_max=0.1, policy=policy)

        service.handle_batch([message, good])  # returns, whatever the body holds

        assert queue.acked_once([message, good])
        assert id(good) not in queue.dead, queue.dead.get(id(good))
        assert _power_state(self.engine, vm) == "running"
        # What the schema accepts, every backend stores: neither the database nor an
        # exception of the store refuses anything.
        assert not (service.dead_letters[admission.Cause.DATABASE]
                    or service.dead_letters[admission.Cause.APPLY]), queue.dead
        verdict = admission.admit(body, message.properties.get("user_id"), time.time(), policy)
        if id(message) in queue.dead:
            (cause,) = [c.value for c, n in service.dead_letters.items() if n]
            assert not isinstance(verdict, admission.Admitted)
            self.counts[f"dead-lettered ({cause})"] += 1
            return verdict, cause
        if isinstance(verdict, admission.Admitted):
            p = verdict.note.payload
            if isinstance(p, payloads.HostHeartbeatPayload):
                assert _host_known(self.engine, p.host)
            else:
                assert _journaled(self.engine, (p.host, p.epoch, p.seq))
            self.counts[f"applied ({verdict.note.event_type.split('.')[0]})"] += 1
        else:
            assert isinstance(verdict, admission.Foreign)
            self.counts["foreign, acked"] += 1
        return verdict, None


def test_every_schema_valid_payload_is_applied_on_every_backend(db_engine):
    """Payloads drawn from the schemas, published by their host's own user: each is
    applied, unless it lies beyond the clock (a generated moment in 9999, say)."""
    harness = Harness(db_engine, "schema-valid")

    @SETTINGS
    @given(body=valid_bodies, identity=st.sampled_from(list(admission.PublisherIdentity)))
    def one_case(body, identity):
        _, cause = harness.settle(body, admission.Policy(identity=identity), "host")
        assert cause in (None, admission.Cause.CLOCK.value)

    one_case()
    _report(harness)


def test_no_hostile_message_stops_the_consumer_or_reaches_the_database(db_engine):
    """Near-valid payloads, broken envelopes and bytes, from any user: each is applied
    or dead-lettered with a reason, and the good event after it is applied."""
    harness = Harness(db_engine, "hostile")

    @SETTINGS
    @given(body=hostile_bodies, identity=st.sampled_from(list(admission.PublisherIdentity)),
           user=st.one_of(st.none(), st.just("guest"), st.text(max_size=8), st.just("host")))
    def one_case(body, identity, user):
        harness.settle(body, admission.Policy(identity=identity), user)

    one_case()
    _report(harness)


def _boundary_cases():
    """Every field of one payload of each kind (inventory entries and the envelope
    included), replaced in turn by each value one step beyond what the schema allows:
    the cases random drawing reaches too rarely to be relied on."""
    others = [None, [], {}, 1.5, ""]
    for event_type in ("instance.started", "host.inventory", "host.heartbeat"):
        base = json.loads((schemas.SAMPLE_DIR / f"{event_type}.json").read_text())
        data = base["payload"][f"{KEY}.data"]
        fields = [("data", k) for k in data] + [("envelope", k) for k in base if k != "payload"]
        fields += [("payload", k) for k in (f"{KEY}.name", f"{KEY}.version")]
        if "instances" in data:
            fields += [("entry", k) for k in data["instances"][0]]
        for where, field in fields:
            for value in NEAR_STRING_VALUES + NEAR_INTEGER_VALUES + others:
                yield event_type, where, field, value


def _boundary_body(event_type, where, field, value, serial: int) -> bytes:
    message = json.loads((schemas.SAMPLE_DIR / f"{event_type}.json").read_text())
    data = message["payload"][f"{KEY}.data"]
    data.update(epoch=int(NOW) - 60, occurred_at=timeutil.isoformat_epoch(NOW - 1))
    data["last_seq" if "last_seq" in data else "seq"] = serial
    if "uuid" in data:
        data["uuid"] = str(uuid.uuid4())
    target = {"data": data, "envelope": message, "payload": message["payload"],
              "entry": data.get("instances", [{}])[0]}[where]
    target[field] = value
    return _envelope(message)


def test_every_field_one_step_beyond_its_bounds(db_engine):
    """The sweep: each boundary case in batches of 25, with a good event after them;
    every case applied or dead-lettered, none refused by the database, the good
    events applied."""
    harness = Harness(db_engine, "boundary sweep")
    cases = list(_boundary_cases())
    serials = iter(range(1_000_000, 10**9))
    for start in range(0, len(cases), 25):
        bodies = [_boundary_body(*case, next(serials)) for case in cases[start:start + 25]]
        harness.settle_many(bodies, admission.Policy())
    _report(harness, expected=len(cases))


def _report(harness: Harness, expected: int = EXAMPLES) -> None:
    (label,) = [k for k, v in COUNTS.items() if v is harness.counts]
    total = sum(harness.counts.values())
    print(f"\n{label}: {total} cases, 0 crashes: "
          + ", ".join(f"{k} {v}" for k, v in sorted(harness.counts.items())))
    assert total >= expected
