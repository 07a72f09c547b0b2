"""Torch's CPU thread count follows the cores other processes leave free (r1core.cpu_engine.threads)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from r1core.cpu_engine import threads
from r1core.cpu_engine.threads import ThreadGovernor, threads_for


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """Each test starts with no process-wide governor and leaves torch's thread count as it found it."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_GOVERNOR", None)
    monkeypatch.delenv("R1_CPU_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("others, cores, expected", [
    (0.0, 2, 2), (0.25, 2, 2), (0.35, 2, 1), (1.0, 2, 1), (1.3, 2, 1), (2.0, 2, 1),
    (1.0, 4, 3), (2.5, 4, 1), (0.0, 1, 1), (0.9, 8, 7),
])
def test_threads_for_counts_a_core_as_taken_from_a_third_of_it(others, cores, expected):
    assert threads_for(others, cores) == expected


class FakeMachine:
    """/proc/stat's busy seconds, this process's CPU seconds and a clock, advanced by hand."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds

    def governor(self, **kwargs) -> ThreadGovernor:
        return ThreadGovernor(max_threads=2, busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.now,
                              **kwargs)


def test_governor_drops_to_the_free_core_and_comes_back_when_the_load_ends():
    torch.set_num_threads(2)
    m = FakeMachine()
    g = m.governor(interval_s=0.5)
    m.advance(0.2, own_cores=2.0, other_cores=1.0)
    assert g.poll() == 2 and g.decisions == 0  # within the interval: no reading, no change
    m.advance(0.4, own_cores=1.5, other_cores=0.5)  # another process holds half a core against our 2 threads
    assert g.poll() == 1 and torch.get_num_threads() == 1
    m.advance(1.0, own_cores=1.0, other_cores=1.0)
    assert g.poll() == 1  # still loaded: no change
    m.advance(1.0, own_cores=1.0, other_cores=0.0)
    assert g.poll() == 2 and torch.get_num_threads() == 2 and g.decisions == 2


def test_governor_subtracts_its_own_cpu_time_and_averages_over_a_long_absence():
    torch.set_num_threads(2)
    m = FakeMachine()
    g = m.governor()
    m.advance(30.0, own_cores=2.0, other_cores=0.1)  # this process used both cores itself: not a load
    assert g.poll() == 2
    m.advance(30.0, own_cores=0.0, other_cores=1.0)  # away for 30 s while another process ran
    assert g.poll() == 1


def test_a_thread_count_set_by_someone_else_is_the_new_ceiling():
    torch.set_num_threads(2)
    m = FakeMachine()
    g = m.governor()
    torch.set_num_threads(1)  # the user's own choice
    m.advance(1.0, own_cores=1.0, other_cores=0.0)
    assert g.poll() == 1 and g.max_threads == 1


def test_an_unreadable_proc_stat_changes_nothing():
    torch.set_num_threads(2)
    g = ThreadGovernor(max_threads=2, busy=lambda: None)
    assert g.poll(force=True) == 2 and g.decisions == 0


def test_busy_seconds_reads_only_the_allowed_cpus(tmp_path):
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {3 * hz} 0 0 0 0 0 0 0 0 0\ncpu0 {hz} 0 {hz} 500 7 0 0 0 0 0\n"
                    f"cpu1 {hz} 0 0 900 0 0 0 0 0 0\nintr 1 2 3\n")
    assert threads._busy_seconds(frozenset({0}), str(stat)) == pytest.approx(2.0)
    assert threads._busy_seconds(frozenset({0, 1}), str(stat)) == pytest.approx(3.0)
    assert threads._busy_seconds(frozenset({0}), str(tmp_path / "missing")) is None


def test_r1_cpu_threads_fixes_the_count_or_leaves_it_alone(monkeypatch):
    monkeypatch.setenv("R1_CPU_THREADS", "1")
    assert threads.adapt() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("R1_CPU_THREADS", "off")
    assert threads.adapt() == 2 and threads._GOVERNOR is None
    for bad, message in (("many", "use 'auto', 'off' or a number"), ("0", "at least 1")):
        monkeypatch.setenv("R1_CPU_THREADS", bad)
        with pytest.raises(ValueError, match=message):
            threads.adapt()


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or torch.get_num_threads() < 2,
                                    reason="needs two CPUs and two torch threads")


@needs_two_cpus
def test_the_engine_runs_on_the_free_core_while_another_process_spins(tiny):
    """A real busy process on one of two cores (started and stopped here, by its PID): the engine's
    first reading sees it and generation runs with one thread; without it, the count is back to 2."""
    from benchmarks.perf import BackgroundLoad
    from r1core.generation import SamplingParams, generate

    model, tok = tiny
    torch.set_num_threads(2)
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
    with BackgroundLoad():
        generate(model, tok, ["1+1="] * 2, params, batch_size=2, engine="r1")
        assert torch.get_num_threads() == 1
    time.sleep(threads.FRESH_AFTER_S + 0.1)  # the next call reads the load anew
    generate(model, tok, ["1+1="] * 2, params, batch_size=2, engine="r1")
    assert torch.get_num_threads() in (1, 2)  # 2 unless something else on this machine holds a core now
    assert threads._GOVERNOR is not None and threads._GOVERNOR.decisions >= 1


def _completions(model, tok, monkeypatch, count: str) -> list[list[int]]:
    from r1core.generation import SamplingParams, sample_token_ids

    monkeypatch.setenv("R1_CPU_THREADS", count)
    prompts = [tok(f"Question {i}: what is {i} + {i * 7}? Think step by step.")["input_ids"] for i in range(8)]
    return [c.ids for c in sample_token_ids(model, prompts, SamplingParams(max_new_tokens=24, temperature=1.0, seed=3),
                                            eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, tokenizer=tok)]


@needs_two_cpus
@pytest.mark.parametrize("which", ["tiny", "smollm2-135m"])
def test_completions_do_not_depend_on_the_thread_count(which, tiny, monkeypatch):
    """The governor may change the count between any two steps, and a rerun after a crash must sample
    what the first run would have: the sampled tokens are the same with one thread and with two
    (oneDNN and the decode kernel split rows, not sums), on the tests' tiny model and on SmolLM2-135M."""
    from r1core.models import load_model_and_tokenizer

    model, tok = tiny if which == "tiny" else load_model_and_tokenizer(None, dtype="float32")
    one, two = (_completions(model, tok, monkeypatch, count) for count in ("1", "2"))
    assert one == two
    assert len({tuple(ids) for ids in one}) > 1
