import sys
import threading

import pytest

from lifecycle_common.threads import named_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_thread_carries_its_name_into_the_operating_system():
    seen = {}
    started, release = threading.Event(), threading.Event()

    def body():
        seen["tid"] = threading.get_native_id()
        started.set()
        release.wait(10)

    thread = named_thread(body, "outbox-writer-with-a-long-name")
    thread.start()
    try:
        assert started.wait(10), "the thread did not start"
        with open(f"/proc/self/task/{seen['tid']}/comm") as f:
            comm = f.read().strip()
    finally:
        release.set()
        thread.join(10)
    assert thread.name == "outbox-writer-with-a-long-name"
    assert comm == "outbox-writer-w"  # the kernel keeps 15 bytes
