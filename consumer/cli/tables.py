"""Tables for the terminal, from prettytable; every cell sanitised first.

A value shown to an operator may come from a hostile party (a domain name is chosen by
whoever defines the domain): control characters are shown escaped, so that no value can
move the cursor, clear the screen or retitle the terminal.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from prettytable import PrettyTable


def cell(value) -> str:
    """``value`` as a table shows it: None as '-', booleans as yes/no, control and
    other non-printable characters escaped (``\\x1b``, ``\\n``)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def table(rows: Iterable[dict], columns: Sequence[str], right: Sequence[str] = ()) -> str:
    """``rows`` (dicts holding at least ``columns``) as a table, text left-aligned and
    the ``right`` columns (numbers) right-aligned."""
    return str(_table([[cell(row[c]) for c in columns] for row in rows], columns, right))


def key_values(row: dict, fields: Sequence[str]) -> str:
    """One record as a two-column table (field, value), as ``openstack ... show`` prints."""
    return table([{"field": f, "value": row[f]} for f in fields], ["field", "value"])


def raw_table(cells: Iterable[Sequence[str]], columns: Sequence[str],
              right: Sequence[str] = ()) -> str:
    """A table of cells already made (by ``cell``, perhaps coloured or cut after)."""
    return str(_table(cells, columns, right))


def _table(cells, columns, right) -> PrettyTable:
    out = PrettyTable(list(columns))
    out.align = "l"
    for name in right:
        out.align[name] = "r"
    out.add_rows([list(c) for c in cells])
    return out


class FixedWidthRows:
    """Rows printed one at a time, as they arrive, under a header printed once: every
    column has a fixed width (``widths``), so rows line up without knowing what comes
    later. A value wider than its column is cut (ending in '~')."""

    def __init__(self, widths: dict[str, int], right: Sequence[str] = ()):
        self.columns = list(widths)
        self.widths = dict(widths)
        self._right = tuple(right)

    def _render(self, cells: Sequence[str]) -> list[str]:
        out = _table([cells], self.columns, self._right)
        out.min_width = dict(self.widths)
        out.max_width = dict(self.widths)
        return out.get_string().splitlines()

    def header(self) -> str:
        """Top border, column names and the rule under them."""
        return "\n".join(self._render([""] * len(self.columns))[:3])

    def row(self, cells: Sequence[str], styles: Sequence[str | None] = ()) -> str:
        """One line for ``cells`` (sanitised already); ``styles``, per column, an ANSI
        SGR code (e.g. '32') wrapped around that cell after it was cut to width."""
        fitted = [fit(c, self.widths[name]) for c, name in zip(cells, self.columns, strict=True)]
        styled = [f"\x1b[{s}m{c}\x1b[0m" if s else c
                  for c, s in zip(fitted, list(styles) + [None] * len(fitted))]
        return self._render(styled)[3]


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one '~' when something was cut."""
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"
