"""The loss checker, in the spirit of Jepsen's: every event the agents stamped is
accounted for, none applied twice, none older overwriting a newer, and the database
says what libvirt says. Pure: it is given what was read (tests/unit/test_checker.py).

What it is given:
- ``stamped``: per host, the agent's epoch and the first and last sequence numbers it
  stamped in the window checked (events and inventories share the sequence);
- ``journal``: the journal's keys (host, epoch, seq), as many times as the journal
  holds each (its primary key makes twice impossible; the checker counts anyway);
- ``applied``: per instance, the newest (epoch, seq) the journal says was applied to
  it by its host; ``rows``: the instances table (host, power_state, deleted, epoch,
  seq); ``libvirt``: per host, each domain's power state as libvirt has it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class Stamped:
    host: str
    epoch: int
    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        return max(0, self.last_seq - self.first_seq + 1)


@dataclasses.dataclass(frozen=True)
class Row:
    host: str
    power_state: str
    deleted: bool
    epoch: int
    seq: int


@dataclasses.dataclass(frozen=True)
class Verdict:
    stamped: int
    lost: int
    applied_twice: int
    out_of_order: int
    difference: int
    lost_examples: tuple = ()
    difference_examples: tuple = ()

    @property
    def clean(self) -> bool:
        return not (self.lost or self.applied_twice or self.out_of_order or self.difference)


def check(stamped: Iterable[Stamped], journal: Iterable[tuple[str, int, int]],
          applied: dict[str, tuple[int, int]], rows: dict[str, Row],
          libvirt: dict[str, dict[str, str]]) -> Verdict:
    stamped = list(stamped)
    counts = Counter(journal)
    lost = [(s.host, s.epoch, seq) for s in stamped
            for seq in range(s.first_seq, s.last_seq + 1) if (s.host, s.epoch, seq) not in counts]
    twice = sum(n - 1 for n in counts.values() if n > 1)
    out_of_order = sum(1 for uuid, newest in applied.items()
                       if uuid in rows and (rows[uuid].epoch, rows[uuid].seq) < newest)
    difference = list(differences(rows, libvirt))
    return Verdict(stamped=sum(s.count for s in stamped), lost=len(lost),
                   applied_twice=twice, out_of_order=out_of_order, difference=len(difference),
                   lost_examples=tuple(lost[:5]), difference_examples=tuple(difference[:5]))


def differences(rows: dict[str, Row], libvirt: dict[str, dict[str, str]]):
    """(uuid, what the database says, what libvirt says) for each instance they
    disagree on: missing, on another host, deleted, or in another power state; and a
    live row of one of these hosts that libvirt no longer has."""
    for host, domains in libvirt.items():
        for uuid, power_state in domains.items():
            row = rows.get(uuid)
            if row is None:
                yield uuid, "missing", power_state
            elif row.host != host or row.deleted or row.power_state != power_state:
                said = f"{row.power_state}{' deleted' if row.deleted else ''} on {row.host}"
                yield uuid, said, f"{power_state} on {host}"
    for uuid, row in rows.items():
        if not row.deleted and row.host in libvirt and uuid not in libvirt[row.host]:
            yield uuid, f"{row.power_state} on {row.host}", "gone"
