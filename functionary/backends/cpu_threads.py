"""How many threads the in-process CPU engine computes on: all its cores, fewer while others are busy.

The model's forward pass runs on OpenMP threads, one per core, that meet at a barrier after
every small parallel region (hundreds per step). When another process takes one of those
cores, the thread that lost it stalls the barrier for a whole scheduler slice each time, and
the engine collapses: measured here on 2 cores with one busy process beside the server, one
stream fell from ≈ 70 to under 2 tok/s with two threads, and ran at ≈ 58 with one. vLLM's own
server avoids this by reserving a core for everything else (so it computes on one of two).

`ComputeThreads` keeps all the cores while nobody else needs them and steps down while other
processes use a share of the machine's cores, measured every half second from `/proc/stat`
minus this process's own CPU time; it steps back up once they have been quiet for two
windows. The engine thread calls `tick()` between steps: OpenMP's thread count belongs to
the thread that starts the parallel regions. A window may span time the engine was idle:
what other processes did meanwhile is what the next steps will meet.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Iterable, Optional

logger = logging.getLogger(__name__)

#: Seconds between two looks at the machine.
WINDOW_S = 0.5
#: Give up a core once other processes use this much more than the cores we leave them.
STEP_DOWN_AT = 0.5
#: Windows in a row that must allow more threads before taking a core back.
QUIET_WINDOWS = 2

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (not idle, iowait)


def machine_busy_seconds(cpus: Iterable[int], stat_text: Optional[str] = None) -> float:
    """CPU seconds spent busy so far, summed over `cpus`, from `/proc/stat` (or `stat_text`)."""
    if stat_text is None:
        with open("/proc/stat", encoding="ascii") as f:
            stat_text = f.read()
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            values = rest.split()
            ticks += sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_for(cores: int, max_threads: int, others: float) -> int:
    """Threads to compute on when other processes keep `others` cores busy."""
    spare = cores - others + (1 - STEP_DOWN_AT)  # others ≤ STEP_DOWN_AT take nothing from us
    return max(1, min(max_threads, math.floor(spare)))


class ComputeThreads:
    """The engine's compute-thread count, adapted to what other processes use of the cores."""

    def __init__(
        self,
        max_threads: int,
        set_threads: Callable[[int], None],
        *,
        cpus: Optional[Iterable[int]] = None,
        busy_seconds: Optional[Callable[[], float]] = None,
        own_seconds: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.threads = self.max_threads
        self._set = set_threads
        cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self.cores = len(cpus)
        self._busy = busy_seconds if busy_seconds is not None else (lambda: machine_busy_seconds(cpus))
        self._own = own_seconds
        self._clock = clock
        self._quiet = 0
        self._broken = False
        self._mark: Optional[tuple[float, float, float]] = None
        self.others = 0.0  # cores other processes used in the last window

    def tick(self) -> None:
        """Look at the machine if a window has passed; change the thread count if needed.

        Never raises: it runs on the engine thread, where an exception would end the engine.
        After an unexpected error it logs once and stops adapting."""
        if self._broken:
            return
        try:
            self._tick()
        except Exception:  # noqa: BLE001
            self._broken = True
            logger.exception("adapting the engine's compute threads failed; they stay at %d", self.threads)

    def _tick(self) -> None:
        now = self._clock()
        if self._mark is not None and now - self._mark[0] < WINDOW_S:
            return
        try:
            busy, own = self._busy(), self._own()
        except (OSError, ValueError):  # no /proc here: keep what we have
            return
        if self._mark is None:
            self._mark = (now, busy, own)
            return
        start, busy0, own0 = self._mark
        self._mark = (now, busy, own)
        self.others = max(0.0, ((busy - busy0) - (own - own0)) / (now - start))
        wanted = threads_for(self.cores, self.max_threads, self.others)
        if wanted < self.threads:
            self._change(wanted)
        elif wanted > self.threads:
            self._quiet += 1
            if self._quiet >= QUIET_WINDOWS:
                self._change(wanted)
        else:
            self._quiet = 0

    def _change(self, threads: int) -> None:
        logger.info(
            "other processes use %.1f of %d cores: the engine computes on %d thread%s (was %d)",
            self.others, self.cores, threads, "" if threads == 1 else "s", self.threads,
        )
        self._set(threads)
        self.threads = threads
        self._quiet = 0
