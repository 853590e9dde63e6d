"""``lifecycle-agent``: the per-host agent's entry point."""

from __future__ import annotations

import sys

from lifecycle_common import config as common
from lifecycle_common import memory, metrics_http
from lifecycle_publisher import config


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-agent", config.load,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    from lifecycle_publisher.agent import Agent  # imports libvirt: after option checks

    memory.limit_malloc_arenas()  # before the agent starts its threads
    try:
        agent = Agent(conf)
    except metrics_http.BindError as exc:
        return common.bind_error("lifecycle-agent", conf, exc)
    return common.serve(agent)


if __name__ == "__main__":
    sys.exit(main())
