"""consumer.admission with faults: a fault about host H is admitted as H's lifecycle
events are, from H's own broker user, and refused from another's."""

from __future__ import annotations

import pytest

from consumer.admission import Admitted, Cause, Policy, PublisherIdentity, Refused, admit
from lifecycle_common import wire
from lifecycle_common.wire import payloads
from tests.integration.test_store_faults import FIELDS, fault_note

HOST = "compute-4"
HOST_USER = Policy(identity=PublisherIdentity.HOST_USER)
NOW = 1_796_000_000.0


@pytest.mark.parametrize("event_type", sorted(FIELDS))
def test_a_fault_is_admitted_from_its_hosts_user_only(event_type):
    body = wire.encode(fault_note(event_type, 5, "5b0e6f7c-8d9a-4b1c-9e2f-3a4b5c6d7e8f",
                                  host=HOST, count=3))
    admitted = admit(body, HOST, NOW, HOST_USER)
    assert isinstance(admitted, Admitted)
    assert isinstance(admitted.note.payload, payloads.FAULT_PAYLOAD_CLASSES)
    assert admitted.note.payload.count == 3
    refused = admit(body, "compute-5", NOW, HOST_USER)
    assert isinstance(refused, Refused) and refused.cause is Cause.PUBLISHER
    assert "may not speak for host 'compute-4'" in refused.reason
    assert isinstance(admit(body, None, NOW, Policy()), Admitted)
