"""The per-host agent: libvirt lifecycle events to versioned notifications on RabbitMQ."""
