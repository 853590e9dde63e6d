"""Wakeup: a flag a thread waits on together with a socket."""

import os
import socket
import threading
import time

import pytest

from lifecycle_publisher.wakeup import Wakeup


@pytest.fixture
def high_socket_pair():
    """A socket pair whose descriptors are numbered 1024 or more, as in a process with
    many files open (select() refuses those)."""
    filler = []
    try:
        while True:
            fd = os.dup(0)
            filler.append(fd)
            if fd >= 1030:
                break
        a, b = socket.socketpair()
        high = [socket.socket(fileno=os.dup(s.fileno())) for s in (a, b)]
        a.close()
        b.close()
        assert high[0].fileno() >= 1024
        yield high
        for s in high:
            s.close()
    finally:
        for fd in filler:
            os.close(fd)


def test_set_wakes_a_waiter():
    wake = Wakeup()
    threading.Timer(0.05, wake.set).start()
    started = time.monotonic()
    assert wake.wait(5.0) is True
    assert time.monotonic() - started < 2.0
    wake.clear()
    assert wake.wait(0.01) is False


def test_a_readable_socket_of_a_high_descriptor_wakes_it(high_socket_pair):
    wake = Wakeup()
    reader, writer = high_socket_pair
    writer.send(b"x")
    started = time.monotonic()
    assert wake.wait(5.0, also=reader) is False  # woken by the socket, flag not set
    assert time.monotonic() - started < 2.0


def test_the_timeout_still_ends_the_wait(high_socket_pair):
    wake = Wakeup()
    started = time.monotonic()
    assert wake.wait(0.05, also=high_socket_pair[0]) is False
    assert 0.04 < time.monotonic() - started < 2.0


def test_an_inbox_wakes_its_worker_once_per_batch_and_again_for_what_is_left():
    from lifecycle_publisher.wakeup import Inbox
    wake = Wakeup()
    inbox = Inbox(wake)
    for item in range(5):
        inbox.put(item)
    assert wake.wait(0) is True
    wake.clear()  # the worker, before it takes
    assert inbox.take(3) == [0, 1, 2]
    assert wake.wait(0) is True  # two are left: the worker comes back for them
    wake.clear()
    assert inbox.take(3) == [3, 4]
    assert wake.wait(0.01) is False and inbox.empty()
