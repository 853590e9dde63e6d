"""JSON Schemas of the payload versions, one file per ``<name>.<version>.json``.

jsonschema and fastjsonschema are imported on first use: only readers validate, and
the agent, which only writes, is spared their memory (about 6 MB).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import jsonschema

SCHEMA_DIR = pathlib.Path(__file__).parent / "schemas"
SAMPLE_DIR = pathlib.Path(__file__).parent / "samples"


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
    return cls(schema)


@functools.lru_cache(maxsize=None)
def _compiled(name: str, version: str) -> Callable[[object], object]:
    """The same schema compiled to Python by fastjsonschema: about a hundred times
    faster than ``validator``, but its messages are poorer, so it only says whether."""
    import fastjsonschema
    # Formats not asserted, as by ``validator``; defaults never written into the data.
    return fastjsonschema.compile(validator(name, version).schema, use_default=False,
                                  use_formats=False, detailed_exceptions=False)


def first_error(name: str, version: str, data: object) -> jsonschema.ValidationError | None:
    """Why ``data`` does not match the ``name`` ``version`` schema, or None if it does.

    The compiled check passes valid data quickly; only data it refuses goes through
    jsonschema, which gives the clear reason and has the last word (where the compiled
    check is stricter, e.g. its ``pattern`` ``$`` refuses a trailing newline)."""
    import fastjsonschema
    import jsonschema
    try:
        _compiled(name, version)(data)
        return None
    except fastjsonschema.JsonSchemaException:
        return jsonschema.exceptions.best_match(validator(name, version).iter_errors(data))


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
