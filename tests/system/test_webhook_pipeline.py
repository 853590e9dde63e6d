"""``lifecycle-webhook`` as real processes under a steady stream from real agents.

One pipeline (the consumer; two hosts, each a real agent: one on libvirtd's shared test
hypervisor, one on a libvirtd of its own, ``benchmarks.daemons``) and five
``lifecycle-webhook`` processes, each on a queue of its own toward a real receiver of
its own (``lab.webhook_receiver``: every request's Standard Webhooks signature checked
with the ``standardwebhooks`` package, its CloudEvent parsed with the ``cloudevents``
SDK): one that accepts everything; one that answers 503 to the first 20 requests (the
last five with a Retry-After longer than the back-off's cap); one down (connection
refused) for 20 s from the stream's start; one that answers 400 to one event; one that
takes 5 s per request.

The stream's libvirt calls change the domains of both hosts in turn. What must hold,
against the consumer's journal (every instance.* event either agent published, its
CloudEvent id ``host:epoch:seq``): every event of both hosts reaches every endpoint
(the refused one excepted on its own), each instance's events first accepted in their
order, never two of an instance in flight at once, each event's source its own host and
its sequence rising with the journal's, host by host; the refused event is in that
webhook's dead-letter queue with the endpoint's answer as its reason; the database holds
every event within seconds of the stream's end while the slow endpoint still has most of
them to take. To keep the test bounded, the slow endpoint's delay is lifted once that is
established; it must then receive everything, in order, as the others do.
"""

from __future__ import annotations

import collections
import json
import statistics
import threading
import time

import pytest
import sqlalchemy as sa

from benchmarks.daemons import Daemon
from benchmarks.hosts import domain_name
from lab.pipeline import domain_xml
from lab.webhook_receiver import Receiver, Received
from tests.support import webhook_run
from tests.support.webhook_run import receivers, secret, secret_path  # noqa: F401 - fixtures

pytestmark = pytest.mark.system

URI = "test+unix:///default"
TYPE_PREFIX = "io.libvirt-lifecycle."
SOURCE_PREFIX = "urn:libvirt-lifecycle:host:"

DOMAINS = 8                  # of the first host, on the shared test hypervisor
SECOND_DOMAINS = 4           # of the second host, on its libvirtd of its own
STREAM_SECONDS = 12.0
OPS_PER_SECOND = 32.0        # one libvirt call each, one lifecycle event each, over
                             # every domain of both hosts in turn
CYCLE = ("suspend", "resume", "destroy", "create")
POWER_STATE = {1: "running", 3: "paused", 5: "shutdown"}  # of libvirt's domain states

FAIL_FIRST = 20              # 503s; the last RETRY_AFTER_LAST of them with a Retry-After
RETRY_AFTER_LAST = 5         # (each holds every instance's events: keep the test short)
RETRY_AFTER = 3              # seconds: beyond retry_interval_max, so only a sender that
                             # reads the header waits that long
RETRY_INTERVAL_MAX = 2
DOWN_FOR = 20.0
REFUSED_NTH = 5              # the refused event: this one of the first domain's
REFUSAL_BODY = "the test refuses this one event"
SLOW_DELAY = 5.0

OPTIONS = {"webhook": {"retry_interval_max": RETRY_INTERVAL_MAX, "request_timeout": 15}}


@pytest.fixture
def domains(pipeline, libvirtd):
    """``DOMAINS`` running domains on the shared test hypervisor, defined on the test's
    own connection (which keeps them alive); destroyed and undefined at the end."""
    import libvirt
    made = []
    try:
        for i in range(DOMAINS):
            dom = libvirtd.defineXML(domain_xml(f"wh-{pipeline.tag}-{i}"))
            made.append(dom)
            dom.create()
        yield made
    finally:
        for dom in made:
            for step in (dom.destroy, dom.undefine):
                try:
                    step()
                except libvirt.libvirtError:
                    pass  # not running, or gone already


@pytest.fixture
def second_host(pipeline):
    """The second host: a libvirtd of its own (session mode, as nobody) holding
    ``SECOND_DOMAINS`` running domains, and the test's own connection to it. At the end
    its agent (if started) is stopped first, then the daemon, which leaves nothing."""
    import libvirt
    daemon = Daemon(pipeline.workdir, f"wh2-{pipeline.tag}")
    conn = None
    try:
        daemon.start()
        daemon.hold(SECOND_DOMAINS)
        conn = libvirt.open(daemon.uri)
        domains = [conn.lookupByName(domain_name(daemon.host, i))
                   for i in range(SECOND_DOMAINS)]
        yield daemon, domains
    finally:
        agent = f"agent-{daemon.host}"
        if pipeline.running(agent):
            pipeline.stop_process(agent)
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # the daemon is gone already
        daemon.stop()


def interleaved(fleet: dict[str, list]) -> list[tuple[str, object]]:
    """``(host, domain)`` of every host's domains, each host's spread evenly over the
    whole (in its own order), so that a stream taking them in turn is steady per host."""
    keyed = [((i + 0.5) / len(domains), n, host, dom)
             for n, (host, domains) in enumerate(fleet.items())
             for i, dom in enumerate(domains)]
    return [(host, dom) for _, _, host, dom in sorted(keyed, key=lambda k: k[:2])]


def run_stream(domains: list[tuple[str, object]], seconds: float,
               rate: float) -> collections.Counter:
    """Suspend, resume, destroy and start the ``(host, domain)`` in turn, ``rate`` calls
    a second for ``seconds`` (paced against the clock, so a slow call does not slow the
    rest); the number of calls made on each host's domains."""
    phase = [0] * len(domains)
    start = time.monotonic()
    calls: collections.Counter = collections.Counter()
    for k in range(int(seconds * rate)):
        pause = start + k / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the stream, not waiting for a condition
        i = k % len(domains)
        host, dom = domains[i]
        getattr(dom, CYCLE[phase[i] % len(CYCLE)])()
        phase[i] += 1
        calls[host] += 1
    return calls


class Journal:
    """The consumer's journal of the hosts' instance events: what every endpoint must
    receive. Rows host by host, each host's in its order (epoch, seq)."""

    def __init__(self, pipeline, hosts: list[str]):
        self.pipeline = pipeline
        self.hosts = list(hosts)

    def rows(self) -> list:
        from consumer.db.tables import journal
        with self.pipeline._db().connect() as conn:  # noqa: SLF001 - the tests' own reading
            return conn.execute(
                sa.select(journal.c.host, journal.c.epoch, journal.c.seq,
                          journal.c.event_type, journal.c.instance_uuid,
                          journal.c.occurred_at, journal.c.applied_at)
                .where(journal.c.host.in_(self.hosts),
                       journal.c.event_type.like("instance.%"))
                .order_by(journal.c.host, journal.c.epoch, journal.c.seq)).all()

    @staticmethod
    def event_id(row) -> str:
        return f"{row.host}:{row.epoch}:{row.seq}"

    def by_host(self, rows) -> dict[str, list]:
        """Each host's rows, in its journal's order (every host, even without rows)."""
        order: dict[str, list] = {host: [] for host in self.hosts}
        for row in rows:
            order[row.host].append(row)
        return order

    def by_instance(self, rows) -> dict[str, list[str]]:
        order: dict[str, list[str]] = {}
        for row in rows:
            order.setdefault(row.instance_uuid, []).append(self.event_id(row))
        return order


def without(order: dict[str, list[str]], event_id: str) -> dict[str, list[str]]:
    return {key: [i for i in ids if i != event_id] for key, ids in order.items()}


def agent_events(pipeline, host: str) -> tuple[float, float]:
    """(lifecycle events the agent wrote, rows of its outbox not yet confirmed)."""
    samples = pipeline.scrape(f"agent-{host}")
    written = sum(v for k, v in samples.items()
                  if k.startswith("lifecycle_agent_events_total{"))
    return written, samples["lifecycle_agent_outbox_rows"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RetryAfterLater:
    """The receiver's ``on_request``: once the first ``FAIL_FIRST - RETRY_AFTER_LAST``
    503s were answered (without Retry-After), the rest are answered with one. ``plain``
    then holds the arrival numbers of the first ones."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.plain: set[int] | None = None
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> None:
        if received.status != 503:
            return
        with self._lock:
            if self.plain is not None:
                return
            failed = [r for r in self.receiver.requests() if r.status == 503]
            if len(failed) >= FAIL_FIRST - RETRY_AFTER_LAST:
                self.receiver.fail_first(RETRY_AFTER_LAST, 503, retry_after=RETRY_AFTER)
                self.plain = {r.arrival for r in failed}


class NthOfInstance:
    """A refusal predicate: the ``nth`` distinct event of instance ``uuid`` the receiver
    sees (its events come one at a time, in order), and that event alone after."""

    def __init__(self, uuid: str, nth: int):
        self.uuid = uuid
        self.nth = nth
        self.chosen: str | None = None
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> bool:
        with self._lock:
            if received.partitionkey == self.uuid and self.chosen is None:
                self._seen.add(received.id)
                if len(self._seen) == self.nth:
                    self.chosen = received.id
            return received.id is not None and received.id == self.chosen


def test_every_event_reaches_every_endpoint_in_order_whatever_it_answers(
        pipeline, receivers, domains, second_host, secret, secret_path, figure):
    # (receivers before domains: the domains' teardown events still find them up)
    host = f"wh-{pipeline.tag}"
    daemon, second_domains = second_host
    host2 = daemon.host
    fleet = {host: domains, host2: second_domains}
    verifying = receivers(secret)
    flaky = receivers(secret, fail_first=FAIL_FIRST - RETRY_AFTER_LAST)
    retry_after = RetryAfterLater(flaky)
    flaky.on_request = retry_after
    down = receivers(secret)
    refusing = receivers(secret)
    refusal = NthOfInstance(domains[0].UUIDString(), REFUSED_NTH)
    refusing.refuse(refusal, 400, REFUSAL_BODY)
    slow = receivers(secret, delay=SLOW_DELAY)
    endpoints = {"verify": (verifying, {}), "flaky": (flaky, {"mode": "binary"}),
                 "down": (down, {}), "refuse": (refusing, {}), "slow": (slow, {})}

    pipeline.start_consumer()
    for name, (receiver, more) in endpoints.items():
        options = {"webhook": {**OPTIONS["webhook"], **more}}
        pipeline.start_webhook(name, receiver.url, secret_path, options, wait=False)
    for name in endpoints:  # started together, then each queue waited for
        queue = pipeline.webhook_queue(name)
        pipeline.wait_for(lambda q=queue: pipeline._queue_exists(q), 30,  # noqa: SLF001
                          f"queue {queue} to be declared")
    pipeline.start_agent(host, URI)
    pipeline.start_agent(host2, daemon.uri)
    journal = Journal(pipeline, list(fleet))

    # -- the stream, with the "down" endpoint refusing connections from its start ------
    down.down_for(DOWN_FOR)
    comes_back = time.monotonic() + DOWN_FOR
    calls: list[collections.Counter] = []
    streaming = threading.Thread(
        target=lambda: calls.append(run_stream(interleaved(fleet), STREAM_SECONDS,
                                               OPS_PER_SECOND)),
        name="stream", daemon=True)
    began = time.monotonic()
    streaming.start()

    def refused_said() -> bool:
        _, report = pipeline.health("down")
        endpoint = report.get("checks", {}).get("endpoint", {})
        return (report.get("status") == "degraded" and endpoint.get("status") == "degraded"
                and "refused" in endpoint.get("detail", ""))
    pipeline.wait_for(refused_said, DOWN_FOR - 5,
                      lambda: f"the down endpoint's health: {pipeline.health('down')}",
                      interval=0.25)
    assert time.monotonic() < comes_back, "the health said it only once the endpoint was up"
    assert pipeline.health("down")[0] == 200  # degraded, not failing: a restart won't help

    streaming.join(STREAM_SECONDS + 30)
    assert not streaming.is_alive(), "the libvirt calls of the stream did not end"
    ended = time.monotonic()

    # -- the database complete while the slow endpoint is far behind --------------------
    def database_complete():
        agents = {h: agent_events(pipeline, h) for h in fleet}  # before the journal
        rows = journal.rows()
        per_host = journal.by_host(rows)
        states = {(r["host"], r["uuid"]): r["power_state"]
                  for r in pipeline.instances(direct=True)}
        settled = all(states.get((h, d.UUIDString())) == POWER_STATE[d.state()[0]]
                      for h, doms in fleet.items() for d in doms)  # last events applied
        confirmed = all(unconfirmed == 0 and written == len(per_host[h])
                        for h, (written, unconfirmed) in agents.items())
        # Each call of the stream is an event: until each has reached its agent (a
        # destroy then a create can leave the state as it was), the journal is short.
        every_call = all(len(per_host.get(h, ())) >= calls[0][h] for h in fleet)
        return rows if confirmed and settled and every_call else None
    rows = pipeline.wait_for(database_complete, 30, "every event of the stream in the journal",
                             interval=0.2)
    complete_after = time.monotonic() - ended
    slow_metrics = pipeline.scrape("slow")
    slow_taken = len(set(slow.accepted_ids()))
    total = len(rows)
    per_host = {h: len(host_rows) for h, host_rows in journal.by_host(rows).items()}
    assert calls and total >= sum(calls[0].values()), (total, calls)
    for h in fleet:  # both hosts streamed, and each one's every call is in the journal
        assert calls[0][h] > 0 and per_host[h] >= calls[0][h], (h, per_host, calls)
    assert complete_after < 15, f"the consumer took {complete_after:.1f}s after the stream"
    latencies = [(r.applied_at - r.occurred_at).total_seconds() for r in rows]
    assert percentile(latencies, 0.99) < 2.0, sorted(latencies)[-10:]
    assert slow_taken <= total // 2, (slow_taken, total)
    assert slow_metrics["lifecycle_webhook_held_messages"] \
        + slow_metrics["lifecycle_webhook_queue_messages"] > 0, slow_metrics
    figure("webhook stream: events (instance.*)", total,
           f"events ({per_host[host]} of {host} on the shared test hypervisor, "
           f"{per_host[host2]} of {host2} on its own libvirtd)")
    figure("webhook stream: rate", total / (ended - began), "events/s")
    figure("webhook stream: database complete after the stream's end",
           complete_after * 1000)
    figure("webhook stream: consumer latency p50 (journal occurred->applied)",
           statistics.median(latencies) * 1000)
    figure("webhook stream: consumer latency p99", percentile(latencies, 0.99) * 1000)
    figure("webhook stream: slow endpoint's events not yet accepted then",
           total - slow_taken, "events")
    figure("webhook stream: slow endpoint's held messages then",
           slow_metrics["lifecycle_webhook_held_messages"], "messages")

    # -- the slow one sped up; then every endpoint gets every event -------------------
    slow.delay(0)
    slow.release()
    expected = journal.by_instance(rows)
    every = [journal.event_id(r) for r in rows]
    refused = refusal.chosen
    for name, (receiver, _) in endpoints.items():
        wanted = [i for i in every if i != refused] if receiver is refusing else every
        receiver.wait_for_ids(wanted, timeout=90 if receiver is down else 60)
    assert refused is not None and refused in every

    for name, (receiver, _) in endpoints.items():
        want = without(expected, refused) if receiver is refusing else expected
        assert receiver.first_acceptances() == want, name
        assert receiver.partition_overlaps() == [], name
        assert all(r.signature_ok for r in receiver.requests()), name
        statuses = receiver.statuses()
        assert set(statuses) <= {200, 503, 400}, (name, statuses)

    # the verifying endpoint: every attribute as the journal says, the source naming
    # the event's own host; host by host, the sequence rising with the journal's order
    kinds = {journal.event_id(r): r for r in rows}
    first: dict[str, Received] = {}
    for received in verifying.accepted():
        row = kinds[received.id]
        assert received.type == TYPE_PREFIX + row.event_type
        assert received.source == SOURCE_PREFIX + row.host
        assert received.subject == received.partitionkey == row.instance_uuid
        assert received.sequence == f"{row.epoch:020d}-{row.seq:020d}"
        assert received.mode == "structured"
        first.setdefault(received.id, received)
    assert set(verifying.statuses()) == {200}
    for h, host_rows in journal.by_host(rows).items():
        sequences = [first[journal.event_id(r)].sequence for r in host_rows]
        assert all(a < b for a, b in zip(sequences, sequences[1:])), h
        assert {first[journal.event_id(r)].source for r in host_rows} == {SOURCE_PREFIX + h}

    # the 503s: twenty; after each one with a Retry-After, nothing at all came (a
    # Retry-After holds every instance's events) for as long as it said, beyond the
    # back-off's cap of RETRY_INTERVAL_MAX
    assert flaky.statuses()[503] == FAIL_FIRST
    assert all(r.mode == "binary" for r in flaky.accepted())
    requests = flaky.requests()
    told = [r for r in requests if r.status == 503 and r.arrival not in retry_after.plain]
    assert len(told) == RETRY_AFTER_LAST
    for failed in told:
        nxt = min(r.at for r in requests if r.at > failed.answered_at)
        assert nxt - failed.answered_at >= RETRY_AFTER - 0.05, (failed.id, nxt)

    # the down one: healthy again once it answers
    pipeline.wait_for(lambda: pipeline.health("down")[1].get("status") == "ok", 15,
                      lambda: f"the down endpoint's health ok again: {pipeline.health('down')}")

    # the refused one: answered 400 once, dead-lettered with the endpoint's answer
    assert refusing.statuses()[400] == 1
    queue = pipeline.webhook_queue("refuse")
    letters = json.loads(pipeline.manage("dlq", "--queue", queue, "list", "--format", "json"))
    assert len(letters) == 1, letters
    [letter] = letters
    assert letter["cause"] == "endpoint"
    assert "400" in letter["reason"] and REFUSAL_BODY in letter["reason"], letter
    assert letter["host"] == host and letter["event_type"] == kinds[refused].event_type
    shown = json.loads(pipeline.manage("dlq", "--queue", queue, "show", letter["id"],
                                       "--format", "json"))
    data = shown["body_json"]["oslo.message"]["payload"]["lifecycle_object.data"]
    assert f"{data['host']}:{data['epoch']}:{data['seq']}" == refused
    assert data["uuid"] == domains[0].UUIDString()
    for name in endpoints:
        if name != "refuse":
            assert json.loads(pipeline.manage("dlq", "--queue", pipeline.webhook_queue(name),
                                              "list", "--format", "json")) == [], name

    # each service's metrics count what its endpoint accepted
    for name, (receiver, _) in endpoints.items():
        distinct = len(set(receiver.accepted_ids()))

        def counted(name=name, distinct=distinct):
            samples = pipeline.scrape(name)
            return samples if samples["lifecycle_webhook_events_delivered_total"] >= distinct \
                else None
        samples = pipeline.wait_for(counted, 15, f"{name}'s delivered count")
        assert samples["lifecycle_webhook_events_delivered_total"] <= len(receiver.accepted())
        assert samples['lifecycle_webhook_dead_letters_total{cause="endpoint"}'] == \
            (1 if name == "refuse" else 0), name
        statuses = ", ".join(f"{n} x {code}" for code, n in sorted(receiver.statuses().items()))
        mean = (samples["lifecycle_webhook_delivery_latency_seconds_sum"]
                / samples["lifecycle_webhook_delivery_latency_seconds_count"])
        figure(f"webhook {name}: distinct events accepted", distinct,
               f"events of {len(receiver.requests())} requests ({statuses}); "
               f"{len(receiver.accepted()) - distinct} accepted twice; mean delivery "
               f"latency {mean * 1000:.0f} ms")
    assert pipeline.scrape("flaky")['lifecycle_webhook_requests_total{answer="5xx"}'] \
        == FAIL_FIRST
    assert pipeline.scrape("down")['lifecycle_webhook_requests_total{answer="error"}'] > 0
    figure("webhook stream: whole test after the agent started",
           (time.monotonic() - began) * 1000)
