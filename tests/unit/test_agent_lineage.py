"""benchmarks.agent_lineage: what a real agent stamped, read from its log, by table."""

from benchmarks.agent_lineage import Span, inventories_not_written, spans, stamped
from benchmarks.checker import Stamped

H = "faults-abc-h1"
PREFIX = "2026-12-06 20:37:21.476 5974 INFO lifecycle_publisher.agent [-] "

LOG = "\n".join([
    PREFIX + f"agent for host {H} starting: epoch 100, next seq 1, 0 events in the outbox",
    PREFIX + "agent for host other starting: epoch 5, next seq 9, 0 events in the outbox",
    PREFIX + f"agent for host {H} stopped: last seq 40, 0 events left in the outbox",
    PREFIX + f"agent for host {H} starting: epoch 101, next seq 41, 3 events in the outbox",
    PREFIX + f"host {H} seq 57: reconnect inventory of 50 domains not written to the outbox "
             "(database or disk is full): lost; another is taken once the disk takes writes "
             "again",
])


def test_each_start_opens_a_span_and_a_clean_stop_closes_it():
    assert spans(LOG, H) == [Span(100, 1, 40), Span(101, 41, None)]


def test_another_hosts_lines_are_not_its_own():
    assert spans(LOG, "other") == [Span(5, 9, None)]


def test_the_running_span_ends_where_its_heartbeats_say():
    assert stamped(H, spans(LOG, H), (0, 0), (101, 60)) == [
        Stamped(H, 100, 1, 40), Stamped(H, 101, 41, 60)]


def test_a_window_starts_after_the_position_given():
    assert stamped(H, spans(LOG, H), (100, 30), (101, 60)) == [
        Stamped(H, 100, 31, 40), Stamped(H, 101, 41, 60)]
    assert stamped(H, spans(LOG, H), (101, 50), (101, 60)) == [Stamped(H, 101, 51, 60)]


def test_a_span_not_heard_of_yet_stamped_nothing_known():
    [_, running] = stamped(H, spans(LOG, H), (0, 0), (100, 40))
    assert running.count == 0


def test_inventories_the_outbox_refused_are_read_with_their_numbers():
    assert inventories_not_written(LOG, H) == [57]
    assert inventories_not_written(LOG, "other") == []
