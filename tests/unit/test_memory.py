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
