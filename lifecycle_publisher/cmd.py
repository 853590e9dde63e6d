"""``lifecycle-agent``: the per-host agent's entry point."""

from __future__ import annotations

import signal
import sys

from lifecycle_common import config as common
from lifecycle_publisher import config


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-agent", config.load,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    from lifecycle_publisher.agent import Agent  # imports libvirt: after option checks

    agent = Agent(conf)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
