"""`trim_heap` gives memory freed below a live allocation back to the system (glibc Linux)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: 200 MiB of 4 KiB buffers (malloc's heap, not pymalloc's or mmap's),
# all freed but the last one, which pins the top of the heap so glibc cannot shrink it on its own.
SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from functionary.backends.heap import trim_heap

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    buffers = [bytearray(4096) for _ in range(51200)]
    keep = buffers[-1]
    del buffers
    before = rss_mib()
    trimmed = trim_heap()
    print(before, rss_mib(), trimmed, len(keep))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    before, after, trimmed = float(out[0]), float(out[1]), out[2]
    assert trimmed == "True"
    assert before - after > 150, (before, after)  # the freed 200 MiB, give or take the allocator's own
