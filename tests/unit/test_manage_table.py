"""lifecycle-manage's tables (prettytable, cells sanitised): a value cannot drive the
operator's terminal, every column is there, numbers align right."""

import pytest

from consumer.cli import tables
from consumer.cli.listing import INSTANCE_COLUMNS


def test_control_characters_in_a_name_are_shown_escaped():
    table = tables.table([{"name": "vm\x1b[2J\x1b[31mpwned\x07\n", "deleted": False}],
                         ["name", "deleted"])
    assert "\x1b" not in table and "\x07" not in table
    assert table.count("\n") == 4  # borders, header, rule, one row, border: no line added
    assert "vm\\x1b[2J\\x1b[31mpwned\\x07\\n" in table and "| no " in table


@pytest.mark.parametrize("value, shown", [
    (None, "-"), (True, "yes"), (False, "no"), (0, "0"), ("", ""), ("日本語 🚀", "日本語 🚀"),
    ("\u202eevil", "\\u202eevil"),  # a right-to-left override is not printable either
    ("tab\there", "tab\\there"),
])
def test_cells(value, shown):
    assert tables.cell(value) == shown


def test_every_column_in_order_with_numbers_aligned_right():
    rows = [{"name": "a", "epoch": 7, "last_seq": 12345},
            {"name": "longer-name", "epoch": 1700000000, "last_seq": 1}]
    lines = tables.table(rows, ["name", "epoch", "last_seq"], right=["epoch", "last_seq"]).splitlines()
    assert [c.strip() for c in lines[1].strip("|").split("|")] == ["name", "epoch", "last_seq"]
    assert len({len(line) for line in lines}) == 1  # every line as wide
    first, second = lines[3], lines[4]
    assert first.endswith("|          7 |    12345 |")
    assert second.endswith("| 1700000000 |        1 |")
    assert first.startswith("| a           |")  # text left-aligned


def test_instance_table_has_its_columns_and_a_row_each():
    rows = [{c: f"{c}-{i}" for c in INSTANCE_COLUMNS} for i in range(3)]
    lines = tables.table(rows, INSTANCE_COLUMNS).splitlines()
    assert len(lines) == 3 + 3 + 1
    for column in INSTANCE_COLUMNS:
        assert column in lines[1]


def test_fixed_width_rows_line_up_with_their_header_whatever_the_value():
    rows = tables.FixedWidthRows({"host": 6, "seq": 4}, right=["seq"])
    header = rows.header().splitlines()
    cut = rows.row(["a-very-long-host", "7"])
    coloured = rows.row(["h1", "12"], styles=["31", None])
    assert len(header) == 3 and "host" in header[1]
    assert len(cut) == len(header[0]) and "a-ver~" in cut and cut.endswith("    7 |")
    assert "\x1b[31mh1\x1b[0m" in coloured  # colour around the value, width kept
    assert coloured.replace("\x1b[31m", "").replace("\x1b[0m", "") == "| h1     |   12 |"
