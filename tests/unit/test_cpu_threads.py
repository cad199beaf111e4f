"""The CPU engine's compute threads: fewer while other processes keep cores busy, all again after."""
from __future__ import annotations

import pytest

from functionary.backends.cpu_threads import (
    QUIET_WINDOWS,
    WINDOW_S,
    ComputeThreads,
    machine_busy_seconds,
    threads_for,
)


class Machine:
    """A fake machine: a clock, busy CPU seconds of all processes, and ours."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy = 0.0
        self.own = 0.0
        self.set_calls: list[int] = []

    def run(self, seconds: float, ours: float, others: float) -> None:
        """`seconds` pass with our process on `ours` cores and other processes on `others`."""
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def governor(self, max_threads: int = 2, cores: int = 2) -> ComputeThreads:
        return ComputeThreads(max_threads, self.set_calls.append, cpus=range(cores),
                              busy_seconds=lambda: self.busy, own_seconds=lambda: self.own,
                              clock=lambda: self.now)


def steps(gov: ComputeThreads, machine: Machine, windows: int, ours: float, others: float) -> None:
    for _ in range(windows):
        machine.run(WINDOW_S, ours, others)
        gov.tick()


def test_alone_it_keeps_every_thread():
    m = Machine()
    gov = m.governor()
    gov.tick()
    steps(gov, m, 10, ours=2.0, others=0.1)  # a load generator or a shell beside the server
    assert gov.threads == 2 and m.set_calls == []


def test_a_busy_process_takes_a_thread_at_once_and_gives_it_back_when_quiet():
    m = Machine()
    gov = m.governor()
    gov.tick()
    steps(gov, m, 1, ours=1.4, others=0.9)  # another process took most of a core
    assert gov.threads == 1 and m.set_calls == [1]
    assert gov.others == pytest.approx(0.9)
    steps(gov, m, 5, ours=1.0, others=1.0)  # still busy: stays down
    assert m.set_calls == [1]
    steps(gov, m, QUIET_WINDOWS - 1, ours=1.0, others=0.0)  # quiet, but not for long enough yet
    assert gov.threads == 1
    steps(gov, m, 1, ours=1.0, others=0.0)
    assert gov.threads == 2 and m.set_calls == [1, 2]


def test_a_short_quiet_spell_does_not_bring_threads_back():
    m = Machine()
    gov = m.governor()
    gov.tick()
    steps(gov, m, 1, ours=1.2, others=1.0)
    for _ in range(4):  # quiet, busy, quiet, busy: never quiet for QUIET_WINDOWS in a row
        steps(gov, m, 1, ours=1.0, others=0.0)
        steps(gov, m, 1, ours=1.0, others=1.0)
    assert m.set_calls == [1]


def test_it_looks_once_per_window():
    m = Machine()
    gov = m.governor()
    gov.tick()
    m.run(WINDOW_S / 3, ours=0.5, others=1.5)
    gov.tick()  # too early: nothing measured yet
    assert gov.threads == 2 and m.set_calls == []
    m.run(WINDOW_S, ours=0.5, others=1.5)
    gov.tick()
    assert gov.threads == 1


def test_short_requests_with_idle_gaps_still_bring_threads_back():
    # The engine steps only while it has requests: a window spans the idle time between them.
    m = Machine()
    gov = m.governor()
    gov.tick()
    steps(gov, m, 1, ours=1.0, others=1.0)
    assert gov.threads == 1
    for _ in range(QUIET_WINDOWS):
        m.run(3.0, ours=0.0, others=0.0)  # idle, nobody else busy either
        gov.tick()  # the next request's first step
        m.run(0.2, ours=1.0, others=0.0)  # a short request: no full window of its own
        gov.tick()
    assert gov.threads == 2


def test_a_busy_process_while_the_engine_was_idle_counts():
    m = Machine()
    gov = m.governor()
    gov.tick()
    m.run(30.0, ours=0.0, others=1.0)  # idle engine, busy neighbour
    gov.tick()  # the next request's first step: it steps down before computing
    assert gov.threads == 1


def test_many_cores_give_up_only_what_others_use():
    m = Machine()
    gov = m.governor(max_threads=8, cores=8)
    gov.tick()
    steps(gov, m, 1, ours=7.0, others=1.0)
    assert gov.threads == 7
    steps(gov, m, 1, ours=6.0, others=2.9)
    assert gov.threads == 5
    steps(gov, m, QUIET_WINDOWS, ours=5.0, others=0.0)
    assert gov.threads == 8 and m.set_calls == [7, 5, 8]


@pytest.mark.parametrize("cores,max_threads,others,expected", [
    (2, 2, 0.0, 2), (2, 2, 0.5, 2), (2, 2, 0.6, 1), (2, 2, 1.9, 1), (2, 1, 0.0, 1),
    (16, 8, 1.0, 8),  # 8 compute threads on 16 logical CPUs (SMT): a busy process fits beside them
    (8, 8, 3.2, 5),
])
def test_threads_for(cores, max_threads, others, expected):
    assert threads_for(cores, max_threads, others) == expected


def test_busy_seconds_from_proc_stat():
    stat = (
        "cpu  10 0 10 500 7 0 0 0 0 0\n"
        "cpu0 100 1 50 9000 20 3 4 5 0 0\n"
        "cpu1 200 0 100 8000 10 0 0 0 0 0\n"
        "cpu2 999 0 999 1 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    import os

    hz = os.sysconf("SC_CLK_TCK")
    # user nice system irq softirq steal of cpu0 and cpu1 (not idle, not iowait, not cpu2)
    assert machine_busy_seconds([0, 1], stat) == pytest.approx((100 + 1 + 50 + 3 + 4 + 5 + 200 + 100) / hz)
    assert machine_busy_seconds([0, 1]) >= 0  # the real /proc/stat parses


def test_an_unexpected_error_stops_adapting_without_raising():
    m = Machine()
    calls = []

    def broken_set(n):
        calls.append(n)
        raise RuntimeError("no")

    gov = ComputeThreads(2, broken_set, cpus=range(2), busy_seconds=lambda: m.busy,
                         own_seconds=lambda: m.own, clock=lambda: m.now)
    gov.tick()
    steps(gov, m, 3, ours=1.0, others=1.0)  # must not raise on the engine thread
    assert calls == [1]  # tried once, then left alone
