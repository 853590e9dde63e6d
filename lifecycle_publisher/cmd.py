"""``lifecycle-agent``: the per-host agent's entry point."""

from __future__ import annotations

import sys

from lifecycle_common import config as common
from lifecycle_common import memory
from lifecycle_publisher import config


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-agent", config.load,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    from lifecycle_publisher.agent import Agent  # imports libvirt: after option checks

    memory.limit_malloc_arenas()  # before the agent starts its threads
    return common.serve(Agent(conf))


if __name__ == "__main__":
    sys.exit(main())
