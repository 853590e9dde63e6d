"""``lifecycle-agent``: the per-host agent's entry point."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Callable, Optional, TypeVar

from lifecycle_common import config as common
from lifecycle_common import memory, metrics_http, systemd
from lifecycle_common.retry import backoff
from lifecycle_publisher import config
from lifecycle_publisher.errors import (OutboxCorrupt, OutboxError, OutboxFull,
                                        OutboxUnwritable)
from lifecycle_publisher.outbox import HostMismatch, filesystem_space, move_aside, outbox_path
from lifecycle_publisher.outbox_outage import RETRY_MAX, OutboxOutage, describe_space

LOG = logging.getLogger(__name__)
T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-agent", config.load,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    memory.limit_malloc_arenas()  # before the agent starts its threads
    try:
        agent = when_outbox_writable(lambda: build_agent(conf), conf.host, conf.state_path)
    except metrics_http.BindError as exc:
        return common.bind_error("lifecycle-agent", conf, exc)
    except HostMismatch as exc:
        print(host_mismatch_message(conf.state_path, exc), file=sys.stderr)
        return 2
    if agent is None:  # asked to stop while the disk refused
        return 0
    return common.serve(agent)


def build_agent(conf):
    """The agent of this configuration, its parts wired (``build_parts``)."""
    from lifecycle_publisher.agent import Agent  # imports libvirt: after option checks
    return Agent(build_parts(conf))


def build_parts(conf):
    """The composition root: the configuration read once, each part built and wired to
    the others. Opens the outbox (OutboxUnwritable on a full disk, HostMismatch over
    another host's state) and takes the new epoch.

    libvirt's callback -> ``Inbox`` (a queue and the worker's wake-up) -> the worker
    thread, which steps the ``OutboxWriter`` and publishes what it wrote (``Publisher``
    with the writer as its source); the main thread (``Agent``) hears of a lost
    libvirt connection and of an inventory wanted through ``AgentState``."""
    # Imported here: they import libvirt and kombu, after the options are checked.
    from lifecycle_common import broker
    from lifecycle_publisher.agent import AgentState, Parts, Settings, heartbeat_body
    from lifecycle_publisher.domain_event import Sequencer
    from lifecycle_publisher.event_source import EventSource
    from lifecycle_publisher.outbox import Checkpointer, Outbox
    from lifecycle_publisher.outbox_writer import OutboxWriter
    from lifecycle_publisher.publisher import Publisher
    from lifecycle_publisher.wakeup import Inbox, Wakeup

    agent_opts = conf.agent
    settings = Settings(
        host=conf.host, state_path=conf.state_path,
        heartbeat_interval=agent_opts.heartbeat_interval,
        inventory_interval=agent_opts.inventory_interval,
        reconnect_interval_max=conf.libvirt.reconnect_interval_max,
        shutdown_timeout=agent_opts.shutdown_timeout,
        outbox_age_degraded_after=conf.health.outbox_age_degraded_after,
        outbox_age_failing_after=conf.health.outbox_age_failing_after,
        metrics_bind=((conf.metrics.bind_host, conf.metrics.bind_port)
                      if conf.metrics.bind_port else None))
    outbox = Outbox(outbox_path(conf.state_path), agent_opts.outbox_synchronous,
                    auto_checkpoint=False)
    try:
        outbox.claim(conf.host)  # HostMismatch: another host's state
        opened = outbox.open_epoch()
    finally:
        outbox.close()  # this thread's connection: the worker has its own
    if opened.fresh:
        LOG.info("host %s: a new state in %s: epoch %d taken from the clock, sequence "
                 "from 1", conf.host, conf.state_path, opened.epoch)
    sequencer = Sequencer(opened.next_seq)
    state = AgentState(conf.host)
    inbox = Inbox(Wakeup())
    source = EventSource(conf.libvirt.connection_uri, sequencer, inbox.put,
                         on_lost=state.libvirt_lost)
    writer = OutboxWriter(inbox, outbox, conf.host, opened.epoch, observe=source.observe,
                          stopped_delay=agent_opts.stopped_event_delay,
                          ask_inventory=state.ask_inventory,
                          fault_coalesce_interval=agent_opts.fault_coalesce_interval)
    publisher = Publisher(
        outbox, broker.Connector(broker.settings(conf)), conf.control_exchange,
        [f"{topic}.info" for topic in conf.oslo_messaging_notifications.topics],
        agent_opts.publish_window, agent_opts.broker_retry_interval_max,
        lambda: heartbeat_body(settings, opened.epoch, sequencer, state, source),
        agent_opts.heartbeat_interval, inbox.wake, user_id=agent_opts.broker_user or None,
        confirm_timeout=agent_opts.confirm_timeout, source=writer,
        on_source_error=lambda exc: state.failed("the outbox writer", exc))
    return Parts(settings=settings, outbox=outbox, epoch=opened.epoch,
                 new_state=opened.fresh, sequencer=sequencer, state=state, inbox=inbox,
                 source=source, writer=writer, publisher=publisher,
                 checkpointer=Checkpointer(outbox))


def when_outbox_writable(build: Callable[[], T], host: str, state_path: str,
                         outage: Optional[OutboxOutage] = None,
                         notifier: Optional[systemd.Notifier] = None) -> Optional[T]:
    """``build()``, tried again while the outbox's disk refuses (it is full: opening
    the outbox writes the epoch), with back-off and a logged reason, until it works or
    SIGTERM or SIGINT asks to stop (None then). Restarting would not free the disk: the
    agent waits rather than fail again and again. systemd is told why, and that the
    start takes longer (EXTEND_TIMEOUT_USEC), so that it does not kill the agent for
    being slow to start. A corrupt outbox found past the check at open is moved aside,
    and the start tried again (at once the first time)."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    outage = outage or OutboxOutage()
    notifier = notifier or systemd.Notifier()
    path = outbox_path(state_path)
    corrupt = 0  # files moved aside in a row: a disk that corrupts every new one waits
    try:
        while not stop.is_set():
            built, error = _attempt(build)
            if isinstance(error, OutboxCorrupt):
                move_aside(path, error.reason)
                if corrupt:
                    stop.wait(backoff(corrupt, RETRY_MAX))
                corrupt += 1
                continue
            if error is not None:
                now = time.monotonic()
                if outage.failed(error.reason, now):
                    LOG.error("host %s: the agent cannot start: the outbox at %s cannot be "
                              "written, %s: %s (%s); waiting for it, trying again at least "
                              "every %.0fs", host, path, "the disk is full" if
                              isinstance(error, OutboxFull) else "the disk refuses writes",
                              error.reason, describe_space(filesystem_space(path)), RETRY_MAX)
                elif (summary := outage.summary_due(now)) is not None:
                    LOG.warning("host %s: the agent still cannot start after %.0fs: the "
                                "outbox at %s cannot be written (%s; %s)", host,
                                now - summary.outage.since, path, error.reason,
                                describe_space(filesystem_space(path)))
                delay = max(0.0, outage.next_retry - now)
                notifier.notify(STATUS=f"degraded (disk: the outbox at {path} cannot be "
                                       f"written: {error.reason}; waiting to start)"[:400],
                                EXTEND_TIMEOUT_USEC=str(int((delay + 30) * 1e6)))
                stop.wait(delay)
                continue
            ended = outage.written()
            if ended is not None:
                LOG.info("host %s: the outbox at %s can be written again after %.1fs; the "
                         "agent starts", host, path, time.monotonic() - ended.since)
            return None if stop.is_set() else built
        LOG.info("host %s: asked to stop while waiting for the outbox's disk", host)
        return None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _attempt(build: Callable[[], T]) -> tuple[Optional[T], Optional[OutboxError]]:
    """``build()``, or the outbox error that stopped it (logged by the caller, outside
    this except clause: oslo.log would add the error to the line again)."""
    try:
        return build(), None
    except (OutboxCorrupt, OutboxUnwritable) as exc:
        return None, exc


def host_mismatch_message(state_path: str, exc: HostMismatch) -> str:
    """Why the agent refuses to start over another host's state, and how to rename."""
    return (f"lifecycle-agent: configuration error: [DEFAULT] host is {exc.given!r}, but "
            f"[DEFAULT] state_path {state_path} holds the state of host {exc.recorded!r} "
            f"({exc.pending} events waiting in its outbox). A state cannot change hosts: "
            "its events name their host and its epochs and sequence are that host's. To "
            f"rename the host: start the agent once more as {exc.recorded!r} and stop it "
            "when its log says 0 events are left in the outbox; run 'lifecycle-manage host "
            f"rename {exc.recorded} {exc.given}' on the controller; move {state_path} "
            f"aside; start the agent as {exc.given!r} (README: Renaming a host). Or set "
            f"[DEFAULT] host back to {exc.recorded!r}.")


if __name__ == "__main__":
    sys.exit(main())
