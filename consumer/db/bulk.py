"""Multi-row writes: many rows in one statement, whatever the backend.

``insert`` adds new rows: a key that exists already is an IntegrityError, as with a
plain INSERT; ``insert_missing`` adds those whose key is not there, leaving the others. ``overwrite`` rewrites rows that exist and that the caller has locked
(SELECT ... FOR UPDATE), every column given: an upsert whose conflict branch is
therefore always the one taken, the portable way to UPDATE many rows in one statement.

PostgreSQL gets each column as one array (``INSERT ... SELECT * FROM unnest(...)``):
a single small statement that the server parses and plans once, rather than a VALUES
list of thousands of literals; each array goes as the text of an array literal, which
is written here about ten times faster than psycopg2 adapts a list element by element.
MySQL/MariaDB and SQLite get an executemany of the dialect's INSERT (PyMySQL sends it
as one multi-row statement; SQLite runs in process).
"""

from __future__ import annotations

import datetime
import functools

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite


def insert(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert ``rows`` (each with every column of ``table``)."""
    if rows:
        _execute(conn, _statement(conn.dialect.name, table, overwrite=False), rows)


def insert_missing(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert the ``rows`` (each with every column of ``table``) whose primary key
    ``table`` does not hold; a row whose key it holds is left as it is."""
    if rows:
        _execute(conn, _statement(conn.dialect.name, table, overwrite=False, missing=True),
                 rows)


def overwrite(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Rewrite the existing, locked rows of ``table`` that ``rows`` name by primary key
    (each with every column of ``table``)."""
    if rows:
        _execute(conn, _statement(conn.dialect.name, table, overwrite=True), rows)


def any_of(column: sa.Column, name: str) -> sa.ColumnElement[bool]:
    """PostgreSQL's ``column = ANY(CAST(:name AS type[]))``, for statements built once:
    bind ``name`` to ``array_literal(values)``."""
    array = sa.bindparam(name, type_=sa.Text())
    return column == sa.any_(sa.cast(array, postgresql.ARRAY(column.type)))


@functools.lru_cache(maxsize=None)
def present_keys_statement(table: sa.Table):
    """PostgreSQL: the primary keys of ``table`` among those given, one array per key
    column (bound by column name, see ``present_keys``). Built and compiled once,
    whatever the number of keys: building a statement per batch, and SQLAlchemy
    computing its cache key, cost more than running it."""
    names = [c.name for c in table.primary_key]
    keys = sa.func.unnest(*(
        sa.cast(sa.bindparam(name, type_=sa.Text()), postgresql.ARRAY(table.c[name].type))
        for name in names)).table_valued(*names).render_derived(name="k")
    return (sa.select(*(table.c[n] for n in names))
            .select_from(table.join(keys, sa.and_(*(table.c[n] == keys.c[n] for n in names)))))


def present_keys(conn: sa.Connection, table: sa.Table, keys: list[tuple]) -> set[tuple]:
    """Which of ``keys`` (primary key tuples) ``table`` holds; PostgreSQL only."""
    names = [c.name for c in table.primary_key]
    params = {n: array_literal([k[i] for k in keys]) for i, n in enumerate(names)}
    return {tuple(row) for row in conn.execute(present_keys_statement(table), params)}


def _execute(conn, statement, rows: list[dict]) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(statement, {name: array_literal([r[name] for r in rows])
                                 for name in rows[0]})
    else:
        conn.execute(statement, rows)


@functools.lru_cache(maxsize=None)
def _statement(dialect: str, table: sa.Table, overwrite: bool, missing: bool = False):
    """The multi-row INSERT: plain, or ``overwrite`` (an upsert), or ``missing`` (a
    key the table holds is skipped)."""
    keys = [c.name for c in table.primary_key]
    others = [c.name for c in table.columns if c.name not in keys]
    if dialect == "postgresql":
        names = [c.name for c in table.columns]
        arrays = sa.func.unnest(*(
            sa.cast(sa.bindparam(name, type_=sa.Text()), postgresql.ARRAY(table.c[name].type))
            for name in names))
        rows = arrays.table_valued(*names).render_derived(name="v")
        statement = postgresql.insert(table).from_select(names, sa.select(*rows.c))
        if overwrite:
            statement = statement.on_conflict_do_update(
                index_elements=keys, set_={c: statement.excluded[c] for c in others})
        elif missing:
            statement = statement.on_conflict_do_nothing(index_elements=keys)
        return statement
    if missing:
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
        if dialect in ("mysql", "mariadb"):
            # A key's own column set to itself: the row left as it is (INSERT IGNORE
            # would also turn other errors, a value too long, into warnings).
            statement = mysql.insert(table)
            return statement.on_duplicate_key_update({keys[0]: table.c[keys[0]]})
        raise ValueError(f"no multi-row insert of missing rows for the {dialect} backend")
    if not overwrite:
        return table.insert()
    if dialect == "sqlite":
        statement = sqlite.insert(table)
        return statement.on_conflict_do_update(
            index_elements=keys, set_={c: statement.excluded[c] for c in others})
    if dialect in ("mysql", "mariadb"):
        statement = mysql.insert(table)
        return statement.on_duplicate_key_update({c: statement.inserted[c] for c in others})
    raise ValueError(f"no multi-row upsert for the {dialect} backend")


def array_literal(values: list) -> str:
    """PostgreSQL's text form of an array of ``values`` (None, bool, int, float, str or
    naive datetime), e.g. ``{"a","b \\"c\\"",NULL}``."""
    return "{" + ",".join(map(_element, values)) + "}"


def _element(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime.datetime):
        return '"' + value.isoformat(sep=" ") + '"'
    raise TypeError(f"no array element form for {type(value).__name__}")
