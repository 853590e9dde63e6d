"""What the agent and the consumer share: power states, the wire format, the transport URL."""
