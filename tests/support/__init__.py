"""Support code for the integration and system tests: certificates and RabbitMQ nodes."""
