"""Why a message could not be read; the reason is what the dead-letter queue records."""


class WireError(ValueError):
    """A message is not a notification this version of the contract can read."""
