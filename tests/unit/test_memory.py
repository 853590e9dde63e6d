import os
import subprocess
import sys
import textwrap

from lifecycle_common import memory


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_malloc_arenas() is False


def test_threads_share_one_arena_once_limited():
    """Eight threads allocating at once: with the limit, glibc makes no arena beyond
    the main one (a thread arena maps a 64 MB region, seen in /proc/self/maps)."""
    script = textwrap.dedent("""
        import os, sys, threading
        from lifecycle_common import memory
        os.environ.pop("MALLOC_ARENA_MAX", None)
        if sys.argv[1] == "limit":
            assert memory.limit_malloc_arenas()
        barrier = threading.Barrier(8)
        def work():
            barrier.wait()
            keep = [bytearray(100_000) for _ in range(50)]
            barrier.wait()
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        maps = open("/proc/self/maps").read().splitlines()
        # Thread arenas are 64 MB-aligned heaps: their reserved part shows as ---p.
        print(sum(1 for line in maps if line.split()[1] == "---p"
                  and int(line.split()[0].split("-")[1], 16)
                  - int(line.split()[0].split("-")[0], 16) > 32 * 2**20))
    """)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def thread_arenas(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", script, mode], env=env, check=True,
                                  capture_output=True, text=True).stdout)

    assert thread_arenas("default") > 0
    assert thread_arenas("limit") == 0


def test_objects_made_at_start_are_out_of_the_collectors_sight_later():
    script = textwrap.dedent("""
        import gc
        from lifecycle_common import memory
        startup = [[i] for i in range(100_000)]
        memory.freeze_startup_objects()
        later = [[i] for i in range(10)]
        print(gc.get_freeze_count() >= 100_000, any(o is later for o in gc.get_objects()),
              any(o is startup for o in gc.get_objects()))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == ["True", "True", "False"]


def test_services_freeze_what_they_set_up_before_they_serve(monkeypatch):
    from lifecycle_common import config

    calls = []
    monkeypatch.setattr(memory, "freeze_startup_objects", lambda: calls.append("freeze"))

    class Service:
        def run(self):
            calls.append("run")

        def stop(self):
            pass

    import signal
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert config.serve(Service()) == 0
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert calls == ["freeze", "run"]
