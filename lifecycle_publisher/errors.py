"""The agent's errors: one small hierarchy, third-party exceptions mapped at the edge."""


class AgentError(Exception):
    """Base of the agent's errors."""


class BrokerUnavailable(AgentError):
    """The broker cannot be reached or dropped the connection; events wait in the outbox."""


class LibvirtUnavailable(AgentError):
    """The libvirt connection cannot be opened or was lost."""
