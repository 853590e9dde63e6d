"""Options both services share, and loading a configuration so that a bad value stops
the service at start with a message naming the option."""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import sys

from oslo_config import cfg
from oslo_log import _options as log_options  # oslo-config-generator's entry point
from oslo_log import log

from lifecycle_common import broker, memory
from lifecycle_common.errors import ConfigError  # noqa: F401 - the services' common.ConfigError

# The broker client's own chatter only from WARNING up (oslo.log's list has amqp).
log.set_defaults(default_log_levels=log.get_default_log_levels() + ["kombu=WARN"])

DEFAULT_OPTS = [
    cfg.StrOpt("host", default=socket.gethostname(), sample_default="<hostname>",
               help="Name of this host as the control plane knows it. The agent stamps "
                    "it on every notification."),
    cfg.StrOpt("transport_url", default="rabbit://guest:guest@127.0.0.1:5672/",
               secret=True,
               help="oslo.messaging transport URL of the RabbitMQ broker(s), e.g. "
                    "rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost."),
    cfg.StrOpt("control_exchange", default="openstack",
               help="Topic exchange that notifications are published on. A stock "
                    "oslo.messaging listener finds them under the same control_exchange."),
]

NOTIFICATION_OPTS = [
    cfg.ListOpt("topics", default=["notifications"],
                help="Notification topics; the routing key is '<topic>.info'. The agent "
                     "publishes on every topic, the consumer reads the first."),
]


def metrics_opts(default_port: int) -> list:
    """``[metrics]``: where the service serves ``/metrics`` and ``/healthz``."""
    return [
        cfg.HostAddressOpt("bind_host", default="127.0.0.1",
                           help="Address that /metrics (Prometheus) and /healthz (JSON "
                                "health) listen on; 0.0.0.0 or :: for every interface."),
        cfg.PortOpt("bind_port", default=default_port,
                    help="Port of /metrics and /healthz; 0 turns the endpoint off."),
    ]


def register_common_opts(conf: cfg.ConfigOpts) -> None:
    log.register_options(conf)  # --debug, --log-file, --log-dir, use_journal, use_json...
    conf.register_opts(DEFAULT_OPTS)
    conf.register_opts(NOTIFICATION_OPTS, group="oslo_messaging_notifications")
    conf.register_opts(broker.RABBIT_OPTS, group=broker.GROUP)


def load(conf: cfg.ConfigOpts, argv: list[str] | None, prog: str, opts_by_group,
         validators=()) -> cfg.ConfigOpts:
    """Parse the command line and files, then read every option once, so that a bad
    value fails now and not on first use; ``validators`` check relations between them.
    ``opts_by_group`` is what the service's ``list_opts()`` returns."""
    try:
        try:
            conf(args=argv, project="lifecycle", prog=prog)
        except SystemExit as exc:
            if exc.code in (0, None):  # --help, --version
                raise
            # oslo.config printed which command-line option (or the same option in a
            # file: --debug, --use-json, ...) is invalid, and exits; say it is ours.
            raise ConfigError("an option of the command line (or given in a file) is "
                              "invalid: see the line above") from None
        for group_name, opts in [*opts_by_group, *log_options.list_opts()]:
            group = conf if group_name in (None, "DEFAULT") else conf[group_name]
            for opt in opts:
                if opt.dest in group:  # oslo.log lists some it does not register
                    getattr(group, opt.dest)
    except cfg.Error as exc:
        raise ConfigError(str(exc)) from exc
    for validate in (_check_transport_url, *validators):
        validate(conf)
    if not conf.oslo_messaging_notifications.topics:
        raise ConfigError("[oslo_messaging_notifications] topics must name at least one topic")
    return conf


def _check_transport_url(conf: cfg.ConfigOpts) -> None:
    """The URL, its query keys and the [oslo_messaging_rabbit] options make a broker
    connection that can be opened: every file readable, the TLS settings loadable."""
    broker.settings(conf)  # raises ConfigError naming the option


def run_main(prog: str, make_conf, argv, body, tool: bool = False) -> int:
    """Load the configuration, set up logging and run ``body(conf)``; a configuration
    error ends the process with status 2 and one line naming the option. A ``tool``
    (lifecycle-manage) logs to stderr unless told otherwise: its stdout is its output."""
    try:
        conf = make_conf(argv)
        if tool:
            conf.set_default("use_stderr", True)
        log.setup(conf, prog, version=_version(), fix_eventlet=False)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:  # a log file or config it cannot use
        print(f"{prog}: configuration error: logging ([DEFAULT] log_file, log_dir, "
              f"log_config_append, use_journal): {exc}", file=sys.stderr)
        return 2
    return body(conf)


def _version() -> str:
    try:
        return importlib.metadata.version("libvirt-lifecycle-events")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def bind_error(prog: str, conf: cfg.ConfigOpts, exc: OSError) -> int:
    """The metrics endpoint cannot listen where the options say: stop, naming them."""
    print(f"{prog}: configuration error: [metrics] bind_host {conf.metrics.bind_host} / "
          f"bind_port {conf.metrics.bind_port}: {exc} (0 turns the endpoint off)",
          file=sys.stderr)
    return 2


def serve(service) -> int:
    """Run ``service`` until SIGTERM or SIGINT asks it to stop (cleanly); the exit
    status is what its ``run`` returns (None: 0)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    memory.freeze_startup_objects()
    return service.run() or 0

