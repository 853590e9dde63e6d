"""Nova's power states, the vocabulary both ends of the pipeline speak."""

import enum


class PowerState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    SUSPENDED = "suspended"
