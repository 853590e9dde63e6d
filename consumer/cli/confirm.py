"""Asking before a command removes or republishes messages."""

from __future__ import annotations

import sys


def confirmed(question: str, yes: bool, stdin=None, stderr=None) -> bool:
    """Whether to go on: ``--yes`` says so; otherwise the operator answers ``question``
    on a terminal. Without a terminal and without ``--yes`` the answer is no, said on
    ``stderr``: a script must ask for it."""
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    if yes:
        return True
    if not stdin.isatty():
        print(f"lifecycle-manage: {question} Not on a terminal: add --yes to go on.",
              file=stderr)
        return False
    print(f"{question} [y/N] ", end="", file=stderr, flush=True)
    answer = stdin.readline().strip().lower()
    return answer in ("y", "yes")
