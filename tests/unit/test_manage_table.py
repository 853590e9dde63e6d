"""lifecycle-manage's table: a value cannot drive the operator's terminal."""

from consumer.cmd.manage import format_table


def test_control_characters_in_a_name_are_shown_escaped():
    table = format_table([{"name": "vm\x1b[2J\x1b[31mpwned", "deleted": False}],
                         ["name", "deleted"])
    assert "\x1b" not in table
    assert "vm\\x1b[2J\\x1b[31mpwned" in table and "no" in table
