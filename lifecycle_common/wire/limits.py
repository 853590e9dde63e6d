"""How large and what shape a value on the wire may be.

The JSON Schemas in ``schemas/`` state these bounds, and the consumer's columns are
sized from them (``tests/unit/test_wire_limits.py`` checks that the three agree), so a
message the schema accepts fits every supported database: SQLite, PostgreSQL and
MariaDB/MySQL. A message that does not fit is refused with the reason when it is
decoded, instead of failing inside a transaction.
"""

from __future__ import annotations

import re

# Integers: BIGINT (signed 64 bits) on every backend; libvirt's codes are C ints.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

# Strings, in characters (JSON Schema's maxLength, Python's len, VARCHAR(n) on
# PostgreSQL and on MariaDB with utf8mb4 all count code points).
HOST_LENGTH = 255        # hosts.name, instances.host, journal.host
NAME_LENGTH = 255        # instances.name: a libvirt domain name
EVENT_TYPE_LENGTH = 64   # journal.event_type, instances.last_event_type
LABEL_LENGTH = 64        # libvirt's symbolic names (STARTED, BOOTED, RUNNING, ...)
TIMESTAMP_LENGTH = 40    # RFC 3339 with nanoseconds and an offset is 35
STATE_REASON_LENGTH = 32  # instances.state_reason: a libvirt detail in lower case
# A fault's own words: a disk's alias and the hypervisor's reason (libvirt's), and the
# disk's source (a file's path, a network disk's name).
FAULT_WORD_LENGTH = 64    # a code's name in lower case (pause, enospc, connected, ...)
FAULT_TEXT_LENGTH = 255   # a device alias, a reason
FAULT_PATH_LENGTH = 4096  # PATH_MAX

# A host name as the agent stamps it: letters, digits, '.', '_' and '-', beginning
# with a letter or digit. It is the key of the host's rows and of its journal.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Text columns: PostgreSQL refuses NUL in text, and no libvirt name contains one.
NO_NUL_PATTERN = r"^[^\x00]*$"

INVENTORY_ENTRIES = 100_000      # domains in one inventory
HEARTBEAT_INTERVAL_MAX = 86400.0  # seconds
BODY_BYTES = 32 * 1024 * 1024     # one message's body, before it is parsed

_HOST = re.compile(HOST_PATTERN)


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot name a host on the wire, or None if it can."""
    if not host:
        return "is empty"
    if len(host) > HOST_LENGTH:
        return f"is longer than {HOST_LENGTH} characters"
    if not _HOST.fullmatch(host):  # (Python's $ also matches before a final newline)
        return ("may hold only letters, digits, '.', '_' and '-', and must begin with a "
                "letter or a digit")
    return None


def clip_text(text: str, length: int) -> str:
    """Free text from libvirt as it fits a field of ``length`` characters: no NUL, cut
    at ``length``: a fault's device, path or reason labels what happened, and is cut
    rather than the fault refused."""
    if len(text) > length or "\x00" in text:
        return text.replace("\x00", "")[:length]
    return text


def clip_name(name: str) -> str:
    """A domain name as it fits the wire: at most NAME_LENGTH characters, no NUL. The
    uuid identifies the instance; the name only labels it, so an overlong name is cut
    rather than the event refused."""
    if len(name) > NAME_LENGTH or "\x00" in name:
        return name.replace("\x00", "")[:NAME_LENGTH]
    return name
