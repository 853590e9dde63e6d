"""The webhook service: the queue's notifications, POSTed to one endpoint as signed
CloudEvents, in order per instance.

Delivery guarantee: at least once. A message is acknowledged only once the endpoint
accepted its event (2xx), or once its dead letter (the endpoint refused it, or its
retries expired; or it cannot be read, or its publisher may not speak for its host)
is confirmed on ``<queue_name>.dlq``; a service that stops or loses the broker before
then leaves it to be redelivered, and sends it again.

Order: the events of one instance (``cloudevents.partition_key``) are sent one at a
time, in the order the queue holds them: the next is sent once the previous one was
accepted or dead-lettered (``lanes.Lanes``). Other instances' events go on meanwhile,
up to ``max_in_flight`` requests at once (``http_sender.Sender``'s connections). The
queue is single-active-consumer, so a second process on it stands by rather than
taking half of an instance's events.

An endpoint that fails is not hammered: while its last answer calls for a retry, one
request at a time goes to it (each instance's event on its own back-off), and a
``Retry-After`` holds every instance's events until the moment it names, not only the
one it answered.

This module does the I/O between the queue and the sender; what an answer means is
``retry_policy``'s to say, how an event is written is ``cloudevents``'.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from typing import Callable, Optional

from lifecycle_common import health, metrics_http, systemd, timeutil
from lifecycle_common.retry import backoff
from consumer import admission
from consumer.amqp_queue import BatchQueue
from consumer.errors import BrokerUnavailable
from lifecycle_webhook import cloudevents, retry_policy
from lifecycle_webhook.http_sender import Job, Sender
from lifecycle_webhook.lanes import Lanes
from lifecycle_webhook.queue_depth import QueueDepth
from lifecycle_webhook.observability import WebhookMetrics, webhook_health

LOG = logging.getLogger(__name__)

_STOP_GRACE = 2.0        # seconds a stop waits for dead letters in flight to be confirmed
_SUMMARY_INTERVAL = 60.0
_IDLE_WAIT = 0.5         # longest wait for the broker or the sender with nothing due
_ACK_BATCH = 64          # acks sent together, at most: one write (a multiple ack) for many
_ACK_LINGER = 0.005      # seconds an ack may wait for others before it is sent alone
_FIRST_ATTEMPTS_KEPT = 100_000  # events whose first attempt is remembered, at most


@dataclasses.dataclass
class Stats:
    delivered: int = 0       # accepted by the endpoint
    attempts: int = 0        # requests answered (or failed)
    retries: int = 0         # answers to try again after
    dead_lettered: int = 0   # dead letters confirmed
    filtered: int = 0        # event types not delivered to this endpoint
    foreign: int = 0         # other publishers' notifications on the topic


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    wanted: Callable[[str], bool]            # event types delivered
    retry_for: float
    retry_interval_max: float
    request_timeout: float
    policy: admission.Policy = admission.Policy()


class Pending:
    """A message taken from the queue, to deliver."""

    __slots__ = ("message", "key", "event_type", "request", "msg_id", "occurred_at",
                 "attempts", "sent_at")

    def __init__(self, message, key: str, event_type: str, request, msg_id: str,
                 occurred_at: Optional[float]):
        self.message = message
        self.key = key
        self.event_type = event_type
        self.request = request
        self.msg_id = msg_id
        self.occurred_at = occurred_at
        self.attempts = retry_policy.Attempts()
        self.sent_at = 0.0


class WebhookService:
    def __init__(self, queue: BatchQueue, sender: Sender, lanes: Lanes, settings: Settings,
                 retry_max: float = 30.0, depth: Optional[QueueDepth] = None):
        """``retry_max``: the longest back-off between attempts to reach the broker;
        ``depth``: what reads the queue's depth (for the metrics and the health)."""
        self.queue = queue
        self.depth = depth
        self.sender = sender
        self.lanes = lanes
        self.settings = settings
        self._retry_max = retry_max
        self._stop = threading.Event()
        self._generation = 0        # of the broker session the held messages came on
        self._acks: list = []
        self._acks_due: Optional[float] = None  # when the oldest ack waiting must go
        self.stats = Stats()
        self.dead_letters: Counter[str] = Counter()   # confirmed, by cause
        self.answers: Counter[str] = Counter()        # by class: 2xx, 4xx, 5xx, error
        self.broker = health.Outage(down_since=time.monotonic())
        self.broker_sessions = 0
        self.endpoint_failing_since: Optional[float] = None
        self.refusals_in_a_row = 0      # answers that dead-letter, since the last 2xx
        self._not_before = 0.0  # monotonic: what the endpoint's last Retry-After asked
        # event id -> (monotonic) when it was first sent by this process, across broker
        # sessions: retry_for counts from there, whatever the reconnections.
        self._first_attempts: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.last_answer: Optional[retry_policy.Answer] = None
        self._summarised = Stats()
        self._next_summary = time.monotonic() + _SUMMARY_INTERVAL
        self.metrics = WebhookMetrics()
        self.metrics.watch(self)
        self._endpoint: metrics_http.MetricsServer | None = None
        self._watchdog = systemd.Watchdog(systemd.Notifier(), self.health, ready=lambda: True)

    def health(self) -> health.Report:
        return webhook_health(self)

    def serve_metrics(self, bind_host: str, bind_port: int) -> None:
        """Listen for /metrics and /healthz (now: a port in use raises BindError)."""
        self._endpoint = metrics_http.MetricsServer(bind_host, bind_port,
                                                    self.metrics.registry, self.health)

    def stop(self) -> None:
        self._stop.set()
        self.sender.wakeup.set()  # out of a wait for the broker or the sender

    def run(self) -> None:
        if self.settings.policy.identity is admission.PublisherIdentity.ANY:
            LOG.warning("[webhook] publisher_identity = any: any broker user can speak "
                        "for any host, and the endpoint believes the source it is told")
        if self._endpoint is not None:
            self._endpoint.start()
        self._watchdog.start()
        if self.depth is not None:
            self.depth.start()
        try:
            self._run()
        finally:
            if self.depth is not None:
                self.depth.stop()
            self.sender.close(1.0)  # (the requests in flight were waited for already)
            self._watchdog.stop()
            if self._endpoint is not None:
                self._endpoint.stop()
        LOG.info("webhook stopped: %s", self.stats)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.queue.connect()
                self.broker_sessions += 1
                self.broker.up()
                if self.depth is not None:
                    self.depth.read_soon()  # its queue exists now
                attempt = 0
                self._consume()
            except BrokerUnavailable as exc:
                self.broker.down(time.monotonic())
                self._forget_session()
                delay = backoff(attempt, self._retry_max)
                attempt += 1
                LOG.warning("broker unavailable (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
            finally:
                self.queue.close()

    def _forget_session(self) -> None:
        """The broker connection is lost: what it delivered comes again on the next one.
        Wait (bounded) for the requests in flight to end first, so that an event sent
        again never overtakes its own first attempt or the one before it."""
        self._generation += 1
        self.lanes.clear()
        self._acks.clear()
        self._acks_due = None
        deadline = time.monotonic() + self.settings.request_timeout + 1.0
        while self.sender.in_flight() and time.monotonic() < deadline:
            self.sender.wakeup.wait(0.2)
            self.sender.results()  # of the lost session: nothing to settle

    def _consume(self) -> None:
        queue, lanes, sender = self.queue, self.lanes, self.sender
        while not self._stop.is_set():
            now = time.monotonic()
            due = self._next_due(now)
            if self._acks_due is not None:
                due = self._acks_due if due is None else min(due, self._acks_due)
            wait = _IDLE_WAIT if due is None else min(_IDLE_WAIT, max(0.0, due - now))
            for message in queue.next_batch(timeout=wait):
                self._take(message)
            self._settle(sender.results())
            self._send()
            if len(self._acks) >= _ACK_BATCH or (
                    self._acks_due is not None and time.monotonic() >= self._acks_due):
                self._flush_acks()
            self._housekeeping()
        self._drain()
        queue.finish(_STOP_GRACE)

    def _drain(self) -> None:
        """Stopping: nothing more is sent; the requests in flight are waited for (up to
        the request timeout) and settled, so that what they delivered is acked."""
        deadline = time.monotonic() + self.settings.request_timeout + 1.0
        while self.sender.in_flight() and time.monotonic() < deadline:
            self.sender.wakeup.wait(0.2)
            self._settle(self.sender.results(), stopping=True)
        self._settle(self.sender.results(), stopping=True)
        self._flush_acks()

    # -- one message in -----------------------------------------------------------

    def _take(self, message) -> None:
        settings = self.settings
        verdict = admission.admit(message.body, message.properties.get("user_id"),
                                  time.time(), settings.policy)
        if isinstance(verdict, admission.Foreign):
            self.stats.foreign += 1
            self._ack(message)
            return
        if isinstance(verdict, admission.Refused):
            self._dead_letter(message, verdict.reason, verdict.cause.value)
            return
        note = verdict.note
        if not settings.wanted(note.event_type):
            self.stats.filtered += 1
            self._ack(message)
            return
        try:
            request = cloudevents.encode(note, settings.mode)
            key, msg_id = cloudevents.partition_key(note), cloudevents.event_id(note)
            occurred = getattr(note.payload, "occurred_at", None)
            occurred_at = timeutil.parse(occurred).timestamp() if occurred else None
        except Exception as exc:  # noqa: BLE001 - whatever an odd payload makes it raise
            self._dead_letter(message, f"cannot be written as a CloudEvent: "
                                       f"{type(exc).__name__}: {exc}", "unreadable")
            return
        self.lanes.add(key, Pending(message, key, note.event_type, request, msg_id,
                                    occurred_at), time.monotonic())

    # -- requests out, answers in -------------------------------------------------

    def _next_due(self, now: float) -> Optional[float]:
        """When there is something to send without anything arriving (None: only an
        answer or a message can change that)."""
        if now < self._not_before:
            return self._not_before  # (an answer in flight wakes the loop before)
        if self.endpoint_failing_since is not None and self.lanes.in_flight:
            return None  # the probe's answer wakes the loop
        return self.lanes.next_due()

    def _send(self) -> None:
        now = time.monotonic()
        if now < self._not_before:
            return  # what the endpoint's Retry-After asked, whatever it answered since
        # while it fails, probe it one request at a time
        limit = 1 if self.endpoint_failing_since is not None else None
        token, first_attempts = self._generation, self._first_attempts
        for pending in self.lanes.take_ready(now, limit):
            pending.sent_at = now
            pending.attempts.sending(first_attempts.get(pending.msg_id, now))
            if pending.msg_id not in first_attempts:
                first_attempts[pending.msg_id] = pending.attempts.first_attempt
                if len(first_attempts) > _FIRST_ATTEMPTS_KEPT:
                    first_attempts.popitem(last=False)
            self.sender.submit(Job((token, pending), pending.request, pending.msg_id))

    def _settle(self, results, stopping: bool = False) -> None:
        settings = self.settings
        for job, answer in results:
            generation, pending = job.token
            if generation != self._generation:
                continue  # of a lost broker session: redelivered and sent again
            now = time.monotonic()
            self._answered(pending, answer, now)
            verdict, at, reason = retry_policy.next_step(
                pending.attempts, answer, now, settings.retry_for,
                settings.retry_interval_max, wall_now=time.time())
            if verdict is retry_policy.Verdict.ACCEPTED:
                self.lanes.done(pending.key)
                self._first_attempts.pop(pending.msg_id, None)
                self._ack(pending.message)
                self.stats.delivered += 1
                if pending.occurred_at is not None:
                    self.metrics.delivered(max(0.0, time.time() - pending.occurred_at))
            elif verdict is retry_policy.Verdict.RETRY:
                self.stats.retries += 1
                if stopping:
                    continue  # returns to the queue when the connection closes
                self.lanes.retry(pending.key, at)
                if pending.attempts.count == 1 or LOG.isEnabledFor(logging.DEBUG):
                    LOG.warning("%s %s (%s): %s; retrying in %.1fs", pending.event_type,
                                pending.msg_id, pending.key, answer.detail, at - now)
            else:
                # The instance's next event waits until the dead letter is confirmed:
                # until then the message may yet come back from the queue.
                self.lanes.settling(pending.key)
                cause = "expired" if retry_policy.judge(answer) is retry_policy.Verdict.RETRY \
                    else "endpoint"
                self._dead_letter(pending.message, reason, cause,
                                  settled=functools.partial(self._settled, generation,
                                                            pending))

    def _answered(self, pending: Pending, answer: retry_policy.Answer, now: float) -> None:
        self.stats.attempts += 1
        self.last_answer = answer
        status = answer.status
        self.answers["error" if status is None else f"{status // 100}xx"] += 1
        self.metrics.request_seconds.observe(max(0.0, now - pending.sent_at))
        verdict = retry_policy.judge(answer)
        if verdict is retry_policy.Verdict.REFUSED:
            self.refusals_in_a_row += 1
        elif verdict is retry_policy.Verdict.ACCEPTED:
            self.refusals_in_a_row = 0
        if verdict is retry_policy.Verdict.RETRY:
            if self.endpoint_failing_since is None:
                self.endpoint_failing_since = now
            asked = retry_policy.retry_after_seconds(answer.retry_after, time.time())
            if asked is not None:  # of the endpoint, not only of this event
                self._not_before = max(self._not_before,
                                       now + min(asked, self.settings.retry_for))
        elif self.endpoint_failing_since is not None:
            LOG.info("the endpoint answers again (%s) after %.1fs", answer.detail,
                     now - self.endpoint_failing_since)
            self.endpoint_failing_since = None

    def _dead_letter(self, message, reason: str, cause: str,
                     settled: Optional[Callable[[], None]] = None) -> None:
        def confirmed() -> None:
            self.stats.dead_lettered += 1
            self.dead_letters[cause] += 1
            if settled is not None:
                settled()
        self.queue.dead_letter(message, reason, cause, on_done=confirmed)

    def _settled(self, generation: int, pending: Pending) -> None:
        """``pending``'s dead letter is confirmed (and the original acked): its
        instance's next event may go."""
        self._first_attempts.pop(pending.msg_id, None)
        if generation == self._generation:
            self.lanes.done(pending.key)

    def _ack(self, message) -> None:
        """Ack ``message`` within ``_ACK_LINGER``, with others (``_flush_acks``)."""
        if not self._acks:
            self._acks_due = time.monotonic() + _ACK_LINGER
        self._acks.append(message)

    def _flush_acks(self) -> None:
        self._acks_due = None
        if self._acks:
            acks, self._acks = self._acks, []
            self.queue.ack(acks)

    # -- now and then -------------------------------------------------------------

    @property
    def queue_depth(self) -> Optional[int]:
        """Messages ready on the queue at the last read (None: not known)."""
        return None if self.depth is None else self.depth.value

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + _SUMMARY_INTERVAL
            self._summarise()

    def _summarise(self) -> None:
        now, then = dataclasses.asdict(self.stats), dataclasses.asdict(self._summarised)
        delta = {k: now[k] - then[k] for k in now}
        if any(delta.values()):
            LOG.info("in the last %.0fs: %s; %d held, %s on the queue", _SUMMARY_INTERVAL,
                     ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in delta.items()),
                     self.lanes.held, "?" if self.queue_depth is None else self.queue_depth)
        self._summarised = dataclasses.replace(self.stats)
