"""The wire contract: versioned payloads inside oslo.messaging's messagingv2 envelope.

Every notification is a JSON document that a stock oslo.messaging notification
listener decodes: ``{"oslo.version": "2.0", "oslo.message": "<json>"}`` around
``message_id``, ``publisher_id``, ``event_type``, ``priority``, ``payload`` and
``timestamp``. The payload is a versioned object; each payload version has a JSON
Schema in ``schemas/`` and each event type a sample in ``samples/``.
"""

from lifecycle_common.wire.envelope import Notification, decode, encode  # noqa: F401
from lifecycle_common.wire.errors import WireError  # noqa: F401
