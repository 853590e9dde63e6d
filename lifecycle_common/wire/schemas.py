"""JSON Schemas of the payload versions, one file per ``<name>.<version>.json``.

Formats are asserted: ``date-time`` is ``timeutil.is_wire_timestamp`` for both
validators (jsonschema on its own would pass any string for want of an RFC 3339
library, and fastjsonschema's own regex lets through moments Python cannot read).

jsonschema and fastjsonschema are imported on first use: only readers validate, and
the agent, which only writes, is spared their memory (about 6 MB).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import TYPE_CHECKING, Callable

from lifecycle_common import timeutil

if TYPE_CHECKING:
    import jsonschema

SCHEMA_DIR = pathlib.Path(__file__).parent / "schemas"
SAMPLE_DIR = pathlib.Path(__file__).parent / "samples"

# The formats the schemas use, and the check that decides each.
FORMATS: dict[str, Callable[[object], bool]] = {"date-time": timeutil.is_wire_timestamp}


def parse_version(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


@functools.lru_cache(maxsize=None)
def known_versions() -> dict[str, list[str]]:
    """Payload name -> the versions that have a schema, oldest first."""
    versions: dict[str, list[str]] = {}
    for path in SCHEMA_DIR.glob("*.json"):
        name, _, version = path.stem.partition(".")
        versions.setdefault(name, []).append(version)
    for name in versions:
        versions[name].sort(key=parse_version)
    return versions


@functools.lru_cache(maxsize=None)
def validator(name: str, version: str) -> jsonschema.protocols.Validator:
    import jsonschema
    schema = json.loads((SCHEMA_DIR / f"{name}.{version}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=_format_checker())


@functools.lru_cache(maxsize=None)
def _format_checker() -> jsonschema.FormatChecker:
    import jsonschema
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name)(check)
    return checker


@functools.lru_cache(maxsize=None)
def _compiled(name: str, version: str) -> Callable[[object], object]:
    """The same schema compiled to Python by fastjsonschema: about a hundred times
    faster than ``validator``, but its messages are poorer, so it only says whether."""
    import fastjsonschema
    # Formats asserted by the same checks as ``validator``'s; defaults never written
    # into the data.
    return fastjsonschema.compile(validator(name, version).schema, use_default=False,
                                  formats=FORMATS, detailed_exceptions=False)


def first_error(name: str, version: str, data: object) -> jsonschema.ValidationError | None:
    """Why ``data`` does not match the ``name`` ``version`` schema, or None if it does.

    The compiled check decides, quickly; only data it refuses goes through jsonschema,
    for the clear reason. Where the two differ the compiled check wins: its ``pattern``
    ``$`` is JSON Schema's (the end of the string), where jsonschema's is Python's (it
    also matches before a final newline, so ``"compute-1\\n"`` would pass as a host)."""
    import fastjsonschema
    import jsonschema
    try:
        _compiled(name, version)(data)
        return None
    except fastjsonschema.JsonSchemaException as exc:
        error = jsonschema.exceptions.best_match(validator(name, version).iter_errors(data))
        return error if error is not None else jsonschema.ValidationError(exc.message)


def prepare() -> None:
    """Load and compile every known schema now: a reader calls this before it
    consumes, so that its first messages do not pay for the imports and compiles
    (a few hundred milliseconds)."""
    for name, versions in known_versions().items():
        for version in versions:
            _compiled(name, version)


def readable_version(name: str, version: str) -> str | None:
    """The schema version to read ``version`` with: the same one, or for a newer minor
    of a known major the newest minor known; None when this code cannot read it."""
    versions = known_versions().get(name, [])
    if version in versions:
        return version
    try:
        major, minor = parse_version(version)
    except ValueError:
        return None
    same_major = [v for v in versions if parse_version(v)[0] == major]
    if same_major and parse_version(same_major[-1])[1] < minor:
        return same_major[-1]
    return None
