"""The agent's durable outbox (a real SQLite file in tmp_path) and the sequencer."""

import os
import sys
import threading
import time

import pytest

from lifecycle_publisher.domain_event import Sequencer
from lifecycle_publisher.outbox import Checkpointer, Epoch, HostMismatch, Outbox, OutboxRow

NOW = 1_795_596_800.0


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "outbox.sqlite")


def reopen(path: str) -> Outbox:
    return Outbox(path)


def rows(*seqs: int) -> list[tuple[int, str, bytes]]:
    return [(seq, "instance.started", f"body-{seq}".encode()) for seq in seqs]


# -- epoch and sequence across restarts --------------------------------------------

def test_first_epoch_is_the_clock_and_the_sequence_starts_at_one(path):
    outbox = Outbox(path)
    assert outbox.open_epoch(now=NOW) == Epoch(epoch=int(NOW), next_seq=1, fresh=True)


@pytest.mark.parametrize("clock_step", [+60.0, 0.0, -3600.0, -NOW])
def test_epoch_strictly_grows_across_reopenings_whatever_the_clock(path, clock_step):
    epochs = []
    now = NOW
    for _ in range(4):
        outbox = reopen(path)
        epochs.append(outbox.open_epoch(now=now).epoch)
        outbox.close()
        now = max(now + clock_step, 0.0)
    assert all(later > earlier for earlier, later in zip(epochs, epochs[1:])), epochs


@pytest.mark.parametrize("clock_step", [+7200.0, -7200.0, +1e9])
def test_after_the_first_start_the_epoch_is_a_counter_whatever_the_clock(path, clock_step):
    """A start with a clock two hours ahead (or behind) does not move the epoch: the
    next start with the right clock is the next number, not one pinned in the future."""
    outbox = Outbox(path)
    first = outbox.open_epoch(now=NOW)
    assert first.fresh
    wrong = outbox.open_epoch(now=NOW + clock_step)
    right = outbox.open_epoch(now=NOW + 60)
    assert (wrong.epoch, right.epoch) == (first.epoch + 1, first.epoch + 2)
    assert not wrong.fresh and not right.fresh


def test_a_lost_state_reads_the_clock_again(path):
    outbox = Outbox(path)
    outbox.open_epoch(now=NOW)
    outbox.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    again = reopen(path).open_epoch(now=NOW + 3600)
    assert again == Epoch(epoch=int(NOW + 3600), next_seq=1, fresh=True)


def test_the_state_belongs_to_one_host(path):
    outbox = Outbox(path)
    outbox.claim("compute-1")
    outbox.claim("compute-1")  # the same host again: fine
    outbox.append(rows(1, 2))
    with pytest.raises(HostMismatch) as raised:
        outbox.claim("compute-1.example.org")
    assert (raised.value.recorded, raised.value.given, raised.value.pending) == (
        "compute-1", "compute-1.example.org", 2)


def test_next_seq_continues_after_the_last_assigned_seq(path):
    outbox = Outbox(path)
    outbox.open_epoch(now=NOW)
    outbox.append(rows(1, 2, 3))
    outbox.close()
    assert reopen(path).open_epoch(now=NOW).next_seq == 4


def test_next_seq_continues_even_when_every_row_was_published(path):
    outbox = Outbox(path)
    outbox.open_epoch(now=NOW)
    outbox.append(rows(1, 2, 3, 4, 5))
    outbox.delete([r.id for r in outbox.fetch_after(0, 100)])
    assert outbox.pending() == 0
    outbox.close()
    again = reopen(path)
    assert again.open_epoch(now=NOW - 100).next_seq == 6


def test_last_seq_never_goes_backwards(path):
    outbox = Outbox(path)
    outbox.append(rows(10))
    outbox.append(rows(7))  # appended late, lower: the high mark stays
    outbox.delete([r.id for r in outbox.fetch_after(0, 100)])
    assert outbox.open_epoch(now=NOW).next_seq == 11


# -- rows -------------------------------------------------------------------------

def test_fetch_after_returns_rows_in_write_order_from_the_cursor(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2))
    outbox.append(rows(3))
    everything = outbox.fetch_after(0, 100)
    assert [(r.seq, r.event_type, r.body) for r in everything] == [
        (1, "instance.started", b"body-1"), (2, "instance.started", b"body-2"),
        (3, "instance.started", b"body-3")]
    ids = [r.id for r in everything]
    assert ids == sorted(ids)
    assert outbox.fetch_after(ids[0], 100) == everything[1:]
    assert outbox.fetch_after(0, 2) == everything[:2]
    assert outbox.fetch_after(ids[-1], 100) == []


def test_fetch_ids_returns_the_rows_asked_for_that_still_exist(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2, 3, 4))
    a, b, c, d = outbox.fetch_after(0, 100)
    outbox.delete([c.id])
    assert outbox.fetch_ids([d.id, a.id, c.id]) == [a, d]
    assert outbox.fetch_ids([]) == []


def test_fetch_ids_handles_more_ids_than_one_sql_statement_takes(path):
    outbox = Outbox(path)
    outbox.append(rows(*range(1, 1201)))
    all_rows = outbox.fetch_after(0, 5000)
    assert outbox.fetch_ids([r.id for r in all_rows]) == all_rows


def test_delete_forgets_only_the_given_rows(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2, 3))
    assert outbox.pending() == 3
    first, second, third = outbox.fetch_after(0, 100)
    outbox.delete([first.id, third.id])
    assert outbox.pending() == 1
    assert outbox.fetch_after(0, 100) == [second]
    outbox.delete([])
    assert outbox.pending() == 1


def test_append_nothing_is_a_no_op(path):
    outbox = Outbox(path)
    outbox.append([])
    assert outbox.pending() == 0
    assert outbox.open_epoch(now=NOW).next_seq == 1


def test_rows_survive_closing_and_reopening(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2, 3))
    outbox.delete([outbox.fetch_after(0, 1)[0].id])
    outbox.close()
    again = reopen(path)
    assert again.pending() == 2
    assert [(r.seq, r.body) for r in again.fetch_after(0, 100)] == [(2, b"body-2"), (3, b"body-3")]
    assert all(isinstance(r, OutboxRow) for r in again.fetch_after(0, 100))


def test_rows_written_by_one_thread_are_read_by_another(path):
    outbox = Outbox(path)
    writer = threading.Thread(target=outbox.append, args=(rows(1, 2),))
    writer.start()
    writer.join()
    assert [r.seq for r in outbox.fetch_after(0, 100)] == [1, 2]


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_synchronous_modes(path, synchronous):
    outbox = Outbox(path, synchronous=synchronous)
    outbox.append(rows(1))
    assert outbox.pending() == 1


def test_bad_synchronous_mode_is_refused(path):
    with pytest.raises(ValueError, match="OFF"):
        Outbox(path, synchronous="OFF")


# -- sequencer --------------------------------------------------------------------

def test_sequencer_counts_from_first():
    sequencer = Sequencer(first=42)
    assert sequencer.last == 41
    assert [sequencer.next() for _ in range(3)] == [42, 43, 44]
    assert sequencer.last == 44


def test_sequencer_hands_out_each_number_once_across_threads():
    sequencer = Sequencer(first=1)
    taken: list[list[int]] = [[] for _ in range(8)]

    def take(mine: list[int]) -> None:
        for _ in range(2000):
            mine.append(sequencer.next())

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(n for mine in taken for n in mine)
    assert everything == list(range(1, 16001))
    assert all(mine == sorted(mine) for mine in taken)
    assert sequencer.last == 16000


def test_sequencer_continues_from_the_outbox(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2, 3))
    sequencer = Sequencer(outbox.open_epoch(now=NOW).next_seq)
    assert sequencer.next() == 4


def test_threads_writing_at_once_never_meet_a_busy_database(tmp_path, monkeypatch):
    """The writer appends while the publisher deletes; they take turns on a lock of
    the process rather than on SQLite's busy wait (which sleeps a millisecond or more
    per try). With SQLite's wait at zero, a collision would raise 'database is locked'."""
    monkeypatch.setattr(Outbox, "busy_timeout", 0.0)
    outbox = Outbox(str(tmp_path / "outbox.sqlite"))
    outbox.append([(seq, "instance.power_on", b"{}") for seq in range(1, 10001)])
    errors = []

    def appender():
        try:
            for seq in range(10001, 12001):
                outbox.append([(seq, "instance.power_on", b"{}")])
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)
        finally:
            outbox.close()

    def deleter():
        try:
            for _ in range(2000):
                outbox.delete([row.id for row in outbox.fetch_after(0, 5)])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            outbox.close()

    threads = [threading.Thread(target=appender), threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert outbox.pending() == 2000


def _fill(outbox: Outbox, rows_count: int) -> None:
    body = b"x" * 3000  # about a page per row
    for start in range(1, rows_count + 1, 50):
        outbox.append([(seq, "instance.started", body) for seq in range(start, start + 50)])


def _wal_file_pages(path: str) -> int:
    return os.path.getsize(path + "-wal") // 4096


def test_without_auto_checkpoint_commits_leave_the_wal_to_the_owner(path):
    outbox = Outbox(path, auto_checkpoint=False)
    _fill(outbox, 1500)
    assert _wal_file_pages(path) > 1400  # SQLite would have checkpointed at 1,000 pages
    pages, done = outbox.checkpoint()
    assert pages > 1400 and done == pages


def test_with_auto_checkpoint_commits_checkpoint_the_wal(path):
    outbox = Outbox(path)
    _fill(outbox, 1500)
    assert _wal_file_pages(path) < 1200  # checkpointed at 1,000 pages, then reused


def test_checkpointer_copies_the_wal_on_its_own_thread(path, wait_for):
    outbox = Outbox(path, auto_checkpoint=False)
    results, threads = [], set()
    checkpoint = outbox.checkpoint

    def spy(*args):
        threads.add(threading.current_thread())
        results.append(checkpoint(*args))
        return results[-1]

    outbox.checkpoint = spy
    checkpointer = Checkpointer(outbox, interval=0.05)
    thread = threading.Thread(target=checkpointer.run)
    thread.start()
    try:
        _fill(outbox, 300)
        wait_for(lambda: any(done == pages >= 300 for pages, done in results), timeout=10,
                 message="the whole WAL checkpointed")
    finally:
        checkpointer.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert threads == {thread}


def _wal_frames(path: str) -> int:
    """Frames the WAL holds now: mxFrame, read from the WAL index's header in the -shm
    file (a u32 at byte 16, native order; https://www.sqlite.org/walformat.html), so
    that looking does not checkpoint. Not the WAL file's size: the file is never cut
    back, so its size is the most the WAL ever held, which depends on how long some
    checkpoint's fsync took while the writes went on (the flaky measure an earlier
    version of these tests used: 12,939 pages after 46,278 commits, once)."""
    with open(path + "-shm", "rb") as shm:
        header = shm.read(48)
    return int.from_bytes(header[16:20], sys.byteorder)


def test_the_wal_starts_over_at_the_first_write_after_a_whole_checkpoint(path, monkeypatch):
    """SQLite writes from the WAL's beginning again when a write begins with all of it
    checkpointed. A checkpoint of a WAL past wal_restart_pages copies all of it (the
    writes are held for the last pages), so the next commit starts it over."""
    monkeypatch.setattr(Outbox, "wal_restart_pages", 100)
    outbox = Outbox(path, auto_checkpoint=False)
    for seq in range(1, 301):
        outbox.append([(seq, "instance.started", b"x" * 900)])
    assert _wal_frames(path) >= 300  # a frame or more per commit, none reused
    outbox.append([(301, "instance.started", b"x" * 900)])
    assert _wal_frames(path) >= 301  # without a whole checkpoint the WAL only grows

    pages, done = outbox.checkpoint()
    assert pages >= 301 and done == pages
    outbox.append([(302, "instance.started", b"x" * 900)])
    assert _wal_frames(path) <= 10  # started over: only the last commit's frames


def test_a_checkpoint_catches_up_with_writes_that_never_pause(path, monkeypatch):
    """The agent's writer does not pause for checkpoints. A passive checkpoint alone
    never copies the frames committed while it runs, so the WAL would never be whole
    and never start over; Outbox.checkpoint, once the WAL holds wal_restart_pages,
    holds the writes for the rest. Each checkpoint below waits (on a condition, not a
    clock) until at least 150 commits have gone in since the last, so that the WAL
    holds 100 pages or more when it begins, however fast or slow this machine is."""
    monkeypatch.setattr(Outbox, "wal_restart_pages", 100)
    outbox = Outbox(path, auto_checkpoint=False)
    stop = threading.Event()
    commits = [0]

    def writer():  # appends only: a reader's older snapshot may hold a checkpoint back
        try:
            while not stop.is_set():
                outbox.append([(commits[0] + 1, "instance.started", b"x" * 900)])
                commits[0] += 1
        finally:
            outbox.close()

    thread = threading.Thread(target=writer)
    thread.start()
    results = []
    try:
        for _ in range(40):
            since = commits[0]
            deadline = time.monotonic() + 30
            while commits[0] - since < 150:
                assert time.monotonic() < deadline, "the writer stalled"
                time.sleep(0.001)
            results.append(outbox.checkpoint())
    finally:
        stop.set()
        thread.join(10)
    # Each returned with the WAL whole (all of it checkpointed), though the writes never
    # paused; the WAL it reports may be a new one already (the writer starts it over
    # the moment the writes are let go).
    assert [r for r in results if r[1] != r[0]] == []
    outbox.append([(commits[0] + 1, "instance.started", b"x" * 900)])
    outbox.checkpoint()
    outbox.append([(commits[0] + 2, "instance.started", b"x" * 900)])
    assert _wal_frames(path) <= 10  # started over: only the last commit's frames


# -- what a scrape or a health check reads ---------------------------------------------

def test_depth_counts_the_rows_and_dates_the_oldest_from_another_thread(path):
    outbox = Outbox(path)
    assert outbox.depth() == (0, None)
    before = time.time()
    outbox.append(rows(1, 2))
    outbox.append(rows(3))
    seen = []
    reader = threading.Thread(target=lambda: seen.append(outbox.depth()))
    reader.start()
    reader.join()
    [(count, oldest)] = seen
    assert count == 3 and before <= oldest <= time.time()
    first = outbox.fetch_after(0, 2)
    outbox.delete([r.id for r in first])
    assert outbox.depth()[0] == 1
