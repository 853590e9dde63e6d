"""The tests' side of the lab (``lab``): pytest fixtures and skips, and what only the
tests use (the machine's libvirtd stopped and started, systemd's notify socket, ...)."""
