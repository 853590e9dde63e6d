"""The consumer's errors: one small hierarchy, third-party exceptions mapped at the edge."""


class ConsumerError(Exception):
    """Base of the consumer's errors."""


class BrokerUnavailable(ConsumerError):
    """The broker cannot be reached or dropped the connection; unacked messages return."""


class DatabaseUnavailable(ConsumerError):
    """The database cannot be reached; the batch stays unacked and is retried."""


class BatchRejected(ConsumerError):
    """The database refused a batch for its content, not for being unreachable."""
