"""Run the whole pipeline as real processes: a consumer, one or more agents, and
``lifecycle-manage`` to read the database. Used by the demo, the system tests and the
benchmarks.

Every process gets its own config file under ``workdir``, its own log file and its own
port for /metrics and /healthz (``metrics_url``); stop() ends them with SIGTERM (SIGKILL
after a deadline) so that nothing is left behind.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Callable

from lab.waiting import wait_for

BIN = os.path.dirname(sys.executable)


def command(name: str) -> str:
    return os.path.join(BIN, name)


def virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], check=check, text=True,
                          capture_output=True, timeout=60)


def domain_xml(name: str) -> str:
    """A domain for libvirt's test driver (test:///default, test+unix:///default)."""
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")


class Pipeline:
    def __init__(self, workdir: str, *, exchange: str, queue: str,
                 database: str | None = None, heartbeat_interval: float = 1.0,
                 host_down_after: float = 5.0, consumer_options: dict | None = None):
        """``consumer_options``: more of the consumers' options, {group: {name: value}}
        (e.g. a cluster's transport_url, [consumer] queue_type)."""
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.exchange = exchange
        self.queue = queue
        self.database = database or f"sqlite:///{self.workdir}/lifecycle.sqlite"
        self.heartbeat_interval = heartbeat_interval
        self.host_down_after = host_down_after
        self.ports: dict[str, int] = {}  # config file name -> its metrics port
        self.consumer_conf = self.write_consumer_conf("consumer.conf", consumer_options or {})
        self._procs: dict[str, subprocess.Popen] = {}
        self._conf_of: dict[str, str] = {}  # process name -> its config file's name
        self._engine = None
        self._webhook_queues: set[str] = set()

    def write_consumer_conf(self, name: str, options: dict) -> str:
        """A consumer configuration: the pipeline's exchange, queue and database, with
        ``options`` ({group: {name: value}}) over them."""
        groups = {"DEFAULT": {"control_exchange": self.exchange},
                  "database": {"connection": self.database},
                  "consumer": {"queue_name": self.queue, "host_down_after": self.host_down_after},
                  "metrics": {"bind_port": self._port(name)}}
        for group, values in options.items():
            groups.setdefault(group, {}).update(values)
        self.ports[name] = int(groups["metrics"]["bind_port"])
        text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                       for group, values in groups.items())
        return self._write(name, text)

    def _port(self, conf_name: str) -> int:
        """A free port on 127.0.0.1 for the metrics of the process run on ``conf_name``."""
        if conf_name not in self.ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.ports[conf_name] = sock.getsockname()[1]
        return self.ports[conf_name]

    def metrics_url(self, name: str, path: str = "/metrics") -> str:
        """Where the process ``name`` ("consumer", "agent-<host>") serves ``path``."""
        return f"http://127.0.0.1:{self.ports[self._conf_of[name]]}{path}"

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text.lstrip())
        return path

    def agent_conf(self, host: str, uri: str, groups: dict | None = None, **agent_opts) -> str:
        """An agent's configuration: ``agent_opts`` in [agent], ``groups`` ({group:
        {name: value}}) for the others."""
        extra = "".join(f"{k} = {v}\n" for k, v in agent_opts.items())
        more = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                       for group, values in (groups or {}).items() if group != "metrics")
        port = (groups or {}).get("metrics", {}).get("bind_port") or self._port(f"agent-{host}.conf")
        self.ports[f"agent-{host}.conf"] = int(port)
        return self._write(f"agent-{host}.conf", f"""
[DEFAULT]
host = {host}
control_exchange = {self.exchange}
state_path = {self.workdir}/agent-{host}
[libvirt]
connection_uri = {uri}
[agent]
heartbeat_interval = {self.heartbeat_interval}
{extra}[metrics]
bind_port = {port}
{more}""")

    def webhook_conf(self, name: str, url: str, secret_file: str,
                     options: dict | None = None) -> str:
        """A webhook service's configuration (``<name>.conf``): the pipeline's exchange,
        a queue of its own (``<pipeline queue>-<name>``), ``url`` and ``secret_file``,
        with ``options`` ({group: {name: value}}) over them."""
        groups = {"DEFAULT": {"control_exchange": self.exchange},
                  "webhook": {"url": url, "secret_file": secret_file,
                              "queue_name": self.webhook_queue(name)},
                  "metrics": {"bind_port": self._port(f"{name}.conf")}}
        for group, values in (options or {}).items():
            groups.setdefault(group, {}).update(values)
        self.ports[f"{name}.conf"] = int(groups["metrics"]["bind_port"])
        self._webhook_queues.add(groups["webhook"]["queue_name"])
        text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                       for group, values in groups.items())
        return self._write(f"{name}.conf", text)

    def webhook_queue(self, name: str) -> str:
        return f"{self.queue}-{name}"

    # -- processes ----------------------------------------------------------------
    def _start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
        log.close()
        self._procs[name] = proc
        return proc

    def start_process(self, name: str, argv: list[str],
                      env: dict | None = None) -> subprocess.Popen:
        """Any other process of the pipeline (a receiver, say): its output in
        ``<name>.log``, stopped with the others."""
        return self._start(name, argv, env)

    def db_sync(self) -> None:
        self.manage("db", "sync")

    def start_consumer(self, name: str = "consumer", timeout: float = 30.0,
                       conf: str | None = None, env: dict | None = None,
                       wait: bool = True) -> subprocess.Popen:
        """Start a consumer (on ``conf``, by default the pipeline's consumer.conf; with
        ``env`` added to the environment) and, with ``wait``, wait until its queue
        exists, so that nothing an agent publishes from then on is unroutable."""
        conf = conf or self.consumer_conf
        self._conf_of[name] = os.path.basename(conf)
        proc = self._start(name, [command("lifecycle-consumer"), "--config-file", conf], env)
        if wait:
            self.wait_for(self._queue_exists, timeout, f"queue {self.queue} to be declared")
        return proc

    def start_webhook(self, name: str, url: str, secret_file: str,
                      options: dict | None = None, timeout: float = 30.0,
                      wait: bool = True) -> subprocess.Popen:
        """Start ``lifecycle-webhook`` (process ``name``) toward ``url`` on a queue of its
        own; with ``wait``, return once that queue exists, so that every event an agent
        publishes from then on reaches it."""
        conf = self.webhook_conf(name, url, secret_file, options)
        self._conf_of[name] = os.path.basename(conf)
        proc = self._start(name, [command("lifecycle-webhook"), "--config-file", conf])
        queue = self.webhook_queue(name) if not (options or {}).get("webhook", {}).get(
            "queue_name") else options["webhook"]["queue_name"]
        if wait:
            self.wait_for(lambda: self._queue_exists(queue), timeout,
                          f"queue {queue} to be declared")
        return proc

    def queue_depth(self, queue: str) -> int:
        """Messages ready on ``queue`` (not those delivered and unacked)."""
        conn = self._broker()
        try:
            return conn.channel().queue_declare(queue, passive=True).message_count
        finally:
            from lifecycle_common import broker
            broker.release(conn)

    def _broker(self):
        from consumer import config
        from lifecycle_common import broker
        settings = broker.settings(config.load(["--config-file", self.consumer_conf]))
        conn, _ = broker.Connector(settings).connect()  # as the consumer connects
        return conn

    def _queue_exists(self, queue: str | None = None) -> bool:
        import amqp
        from lifecycle_common import broker
        conn = self._broker()
        try:
            conn.channel().queue_declare(queue or self.queue, passive=True)
            return True
        except amqp.exceptions.NotFound:
            return False
        finally:
            broker.release(conn)

    def start_agent(self, host: str, uri: str, wait: bool = True, timeout: float = 30.0,
                    groups: dict | None = None, env: dict | None = None,
                    **agent_opts) -> subprocess.Popen:
        """Start an agent; with ``wait`` (a consumer must be running), return once its
        start inventory is in the database, so that every later change is an event."""
        conf = self.agent_conf(host, uri, groups, **agent_opts)
        self._conf_of[f"agent-{host}"] = os.path.basename(conf)
        started = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        proc = self._start(f"agent-{host}", [command("lifecycle-agent"), "--config-file", conf],
                           env)
        if wait:
            self.wait_for(lambda: self._inventory_since(host, started), timeout,
                          f"agent {host}'s start inventory")
        return proc

    def _inventory_since(self, host: str, moment: datetime.datetime) -> bool:
        """Whether an inventory of ``host`` was applied at or after ``moment`` (naive
        UTC, as the journal stores it)."""
        import sqlalchemy as sa
        from consumer.db.tables import journal
        with self._db().connect() as conn:
            return conn.execute(sa.select(journal.c.seq).where(
                journal.c.host == host, journal.c.event_type == "host.inventory",
                journal.c.applied_at >= moment).limit(1)).first() is not None

    def stop_process(self, name: str, sig: int | None = signal.SIGTERM,
                     timeout: float = 20.0) -> int:
        """Signal the process (``sig`` None: it was signalled already) and wait for it;
        SIGKILL after ``timeout``. Returns its exit status."""
        proc = self._procs.pop(name)
        if proc.poll() is None:
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def signal_process(self, name: str, sig: int) -> None:
        self._procs[name].send_signal(sig)

    def stop(self) -> None:
        for name in reversed(list(self._procs)):  # agents before the consumer
            self.stop_process(name)

    def delete_broker_objects(self, url: str = "amqp://guest:guest@127.0.0.1:5672//") -> None:
        """Delete the pipeline's queues and exchanges from the broker (tests and tools
        that use a name of their own once leave nothing behind)."""
        import kombu
        with kombu.Connection(url, connect_timeout=5) as conn:
            channel = conn.channel()
            for queue in (self.queue, *sorted(self._webhook_queues)):
                channel.queue_delete(queue)
                channel.queue_delete(f"{queue}.dlq")
                channel.exchange_delete(f"{queue}.dlx")
            channel.exchange_delete(self.exchange)

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def log(self, name: str) -> str:
        with open(os.path.join(self.workdir, f"{name}.log"), errors="replace") as f:
            return f.read()

    # -- what the processes serve over HTTP ------------------------------------------
    def scrape(self, name: str) -> dict[str, float]:
        """The process's /metrics, each sample keyed as Prometheus writes it:
        ``'lifecycle_agent_events_total{transition="paused"}'``."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(self.metrics_url(name), timeout=5) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def health(self, name: str) -> tuple[int, dict]:
        """The process's /healthz: the HTTP status and the JSON; (0, {"status":
        "unreachable"}) while nothing answers (the process is starting, or gone)."""
        try:
            with urllib.request.urlopen(self.metrics_url(name, "/healthz"), timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except urllib.error.URLError as exc:
            return 0, {"status": "unreachable", "error": str(exc.reason)}

    # -- lifecycle-manage ---------------------------------------------------------
    def manage(self, *args: str) -> str:
        done = subprocess.run([command("lifecycle-manage"), "--config-file", self.consumer_conf,
                               *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"lifecycle-manage {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def instances(self, direct: bool = False) -> list[dict]:
        """The instance list as ``lifecycle-manage instance list --format json`` prints
        it; ``direct`` reads the same through the library, without a process per call."""
        if direct:
            from consumer.db import queries
            return json.loads(json.dumps(queries.list_instances(self._db())))
        return json.loads(self.manage("instance", "list", "--format", "json"))

    def hosts(self, direct: bool = False) -> list[dict]:
        """As ``lifecycle-manage host list --format json`` prints it (``direct``: read
        through the library)."""
        if direct:
            from consumer.db import queries
            return json.loads(json.dumps(queries.list_hosts(self._db())))
        return json.loads(self.manage("host", "list", "--format", "json"))

    def _db(self):
        from consumer.db import engine
        if self._engine is None:
            self._engine = engine.create(self.database)
        return self._engine

    def wait_for(self, what: Callable[[], object], timeout: float, message: str,
                 interval: float = 0.05):
        """Poll ``what`` until it returns something truthy (``lab.waiting.wait_for``,
        TimeoutError after ``timeout``); RuntimeError at once, with its log, if one of the
        pipeline's processes fails meanwhile."""
        return wait_for(what, timeout, message, interval,
                        watch=lambda: self._check_running(message))

    def _check_running(self, waiting_for: str) -> None:
        for name, proc in self._procs.items():
            if proc.poll() not in (None, 0):  # a clean exit may be what we wait for
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting "
                                   f"for {waiting_for}:\n{self.log(name)[-3000:]}")

    def wait_for_instance(self, name: str, timeout: float = 15.0, direct: bool = False,
                          **expected) -> dict:
        def match():
            for row in self.instances(direct):
                if row["name"] == name and all(row[k] == v for k, v in expected.items()):
                    return row
            return None
        return self.wait_for(match, timeout, f"instance {name} with {expected}")


def qemu_domain_xml(name: str) -> str:
    """A real QEMU guest: 32 MiB, no disk, no display; KVM where /dev/kvm exists.
    (lab.guests builds it, and the guests that raise faults.)"""
    from lab.guests import guest_xml
    return guest_xml(name)
