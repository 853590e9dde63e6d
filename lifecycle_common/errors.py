"""Errors every service shares. No imports of the project's own: any module may raise
these without pulling configuration or broker code in."""


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the option."""
