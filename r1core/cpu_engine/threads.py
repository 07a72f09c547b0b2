"""Torch's CPU thread count kept at the cores other processes leave free (:func:`adapt`).

With the OpenMP build of torch every parallel region (each oneDNN matmul, each attention call)
ends when its slowest thread ends. When another process keeps one of this machine's cores busy,
the torch thread that shares that core runs about half the time, in scheduler slices of
milliseconds, and every region of a decode step waits for it: on this 2-core machine with one
core busy, generation with 2 threads ran at a small fraction of its quiet speed, while 1 thread on
the free core keeps about half of it (the figures are in ``benchmarks/README.md``, contention).

:func:`adapt` reads how much CPU time the cores this process may run on spent busy since its last
reading (``/proc/stat``), subtracts this process's own CPU time (``time.process_time``: every
thread of it, spinning OpenMP workers included), and sets ``torch.set_num_threads`` to the cores
left, between 1 and the count torch had when the first call was made (the machine's, or what the
user set with ``OMP_NUM_THREADS`` / ``torch.set_num_threads``). The decode loop calls it every
step, the trainers at every optimizer step; it reads ``/proc/stat`` at most every half second and
costs a clock read otherwise; at the start of a generate call or training step, a reading older than
2 s is renewed over a 0.05 s pause (:func:`adapt`'s ``fresh``), and so is a process's first reading. Child processes (verifier workers) count as
other processes: they compete for the same cores.

``R1_CPU_THREADS``: ``auto`` (the default) adapts; a number fixes torch's thread count to it and
turns adaptation off; ``off`` leaves torch's count alone. Linux only (elsewhere nothing changes).

``set_num_threads`` must run on the thread that runs the ops (OpenMP's thread count is a
per-thread setting), so :func:`adapt` is called from the compute loop itself, never from a
background thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Fraction of a core that other processes may use before that core counts as taken: a core
#: another process keeps 30% busy already stalls every parallel region that has a thread on it.
TAKEN_AT = 0.3


def _busy_seconds(cpus: frozenset[int], path: str = "/proc/stat") -> float | None:
    """Seconds the CPUs in ``cpus`` spent busy since boot (user + nice + system + irq + softirq +
    steal, in ``/proc/stat``'s clock ticks converted), or None where ``/proc/stat`` is unreadable."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        ticks += sum(fields[:8]) - fields[3] - fields[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_for(others_busy_cores: float, max_threads: int) -> int:
    """Torch threads to run with when other processes used ``others_busy_cores`` (cores, e.g. 1.0 for
    one busy process) of the ``max_threads`` cores available: one per core they left free, at least 1.
    A core counts as taken from :data:`TAKEN_AT` of it on (0.3 -> 1 taken, 1.3 -> 2)."""
    taken = max(0, int(others_busy_cores - TAKEN_AT + 0.999999))
    return max(1, min(max_threads, max_threads - taken))


class ThreadGovernor:
    """Keeps ``torch.get_num_threads()`` at :func:`threads_for` of the other processes' load since the
    last decision, deciding again once ``interval_s`` seconds have passed. The load is averaged over
    the whole time since then, however long this process was away (its own CPU time is subtracted,
    whatever it was doing).

    ``busy``, ``own`` and ``clock`` are injectable for tests: busy seconds of this process's CPUs
    since boot (None: unknown), this process's CPU seconds, and a monotonic clock in seconds.
    """

    def __init__(self, *, interval_s: float = 0.5, max_threads: int | None = None,
                 busy: Callable[[], float | None] | None = None, own: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic):
        import torch

        cpus = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
        self.interval_s = interval_s
        self.max_threads = max_threads or min(torch.get_num_threads(), max(len(cpus), 1))
        self._busy = busy or (lambda: _busy_seconds(cpus))
        self._own, self._clock = own, clock
        self._set, self._get = torch.set_num_threads, torch.get_num_threads
        self.threads = self._get()
        self.decisions = 0  # how many times the count changed
        self._mark = self._reading()  # (clock, busy, own) at the interval's start, or None

    def _reading(self) -> tuple[float, float, float] | None:
        busy = self._busy()
        return None if busy is None else (self._clock(), busy, self._own())

    def age(self) -> float:
        """Seconds since the last reading (infinite without one)."""
        return float("inf") if self._mark is None else self._clock() - self._mark[0]

    def fresh(self, sample_s: float) -> int:
        """Read the load over the next ``sample_s`` seconds (this thread sleeps) and decide on it alone."""
        self._mark = self._reading()
        time.sleep(sample_s)
        return self.poll(force=True)

    def poll(self, *, force: bool = False) -> int:
        """Decide again when ``interval_s`` has passed (``force``: now); returns the thread count in force."""
        mark = self._mark
        if mark is None or (not force and self._clock() - mark[0] < self.interval_s):
            return self.threads
        now = self._reading()
        if now is None or now[0] <= mark[0]:
            return self.threads
        self._mark = now
        current = self._get()
        if current != self.threads:  # someone else set it since: that is the new ceiling
            self.max_threads = self.threads = current
        others = max(0.0, (now[1] - mark[1]) - (now[2] - mark[2])) / (now[0] - mark[0])  # cores
        wanted = threads_for(others, self.max_threads)
        if wanted != self.threads:
            log.info("torch threads %d -> %d (other processes used %.2f of %d cores over %.1f s)",
                     self.threads, wanted, others, self.max_threads, now[0] - mark[0])
            self._set(wanted)
            self.threads = wanted
            self.decisions += 1
        return self.threads


_GOVERNOR: ThreadGovernor | None = None
#: Seconds after which ``adapt(fresh=True)`` reads the load anew, and the pause it reads it over
#: (5 clock ticks a core at Linux's 100 Hz: enough to tell a busy core from an idle one).
FRESH_AFTER_S, FRESH_SAMPLE_S = 2.0, 0.05


def adapt(*, fresh: bool = False) -> int:
    """Torch's CPU thread count for the next ops, adapted to the cores other processes leave free
    (see the module docstring; ``R1_CPU_THREADS`` chooses the policy). Returns the count in force.

    ``fresh``: the caller is about to start a long piece of work (a generate call, a training step).
    If the last reading is older than :data:`FRESH_AFTER_S`, the load is read over a pause of
    :data:`FRESH_SAMPLE_S` first, so a load that started while this process was elsewhere is seen
    before the work starts rather than averaged away over the gap.
    """
    global _GOVERNOR
    mode = os.environ.get("R1_CPU_THREADS", "auto").strip().lower()
    if mode == "auto":
        if _GOVERNOR is None:
            if not os.path.exists("/proc/stat"):
                import torch

                return torch.get_num_threads()
            _GOVERNOR = ThreadGovernor()
            return _GOVERNOR.fresh(FRESH_SAMPLE_S)  # the process's first reading, before its first ops
        return _GOVERNOR.fresh(FRESH_SAMPLE_S) if fresh and _GOVERNOR.age() > FRESH_AFTER_S else _GOVERNOR.poll()
    import torch

    if mode == "off":
        return torch.get_num_threads()
    try:
        fixed = int(mode)
    except ValueError:
        raise ValueError(f"R1_CPU_THREADS={mode!r}: use 'auto', 'off' or a number of threads (e.g. 2).") from None
    if fixed < 1:
        raise ValueError(f"R1_CPU_THREADS={fixed}: the thread count must be at least 1.")
    if torch.get_num_threads() != fixed:
        torch.set_num_threads(fixed)
    return fixed
