"""The agent's errors: one small hierarchy, third-party exceptions mapped at the edge."""


class AgentError(Exception):
    """Base of the agent's errors."""


class BrokerUnavailable(AgentError):
    """The broker cannot be reached or dropped the connection; events wait in the outbox."""


class LibvirtUnavailable(AgentError):
    """The libvirt connection cannot be opened or was lost."""


class OutboxError(AgentError):
    """The outbox's SQLite database failed; ``path`` is its file, ``reason`` SQLite's
    own message ("database or disk is full", "disk I/O error", ...)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"outbox {path}: {reason}")


class OutboxUnwritable(OutboxError):
    """The outbox's filesystem refuses writes (full, read-only, an I/O error): what the
    outbox holds stays; the agent stays up, degraded, and tries again."""


class OutboxFull(OutboxUnwritable):
    """The outbox's filesystem is full ("database or disk is full")."""


class OutboxCorrupt(OutboxError):
    """The outbox file is not a database, or a malformed one: the agent moves it aside
    and starts a new state (at start), or exits to be restarted (at run time)."""
