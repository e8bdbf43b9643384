"""The benchmark harness's timing rule (benchmarks/run.py), on a simulated clock.

Each fake route advances the clock by its own duration per call, so the number of calls the
harness makes follows from its rule alone: repeats, the 1 s minimum for fast routes (capped),
the route budget, and an untimed call before each timed one for routes under ``WARM_CALL_S``.
Importing ``benchmarks.run`` turns x64 on, which ``conftest.py`` has already done.
"""

import types

import pytest

from benchmarks import run as R
from benchmarks import workloads as W


@pytest.fixture
def clock(monkeypatch):
    state = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(R, "time", types.SimpleNamespace(perf_counter=lambda: state.now))
    return state


def _routes(clock, durations: dict[str, float]):
    calls = []

    def make(name, seconds):
        def fn():
            calls.append(name)
            clock.now += seconds

        return fn, W.Route(name, "naive", lambda wl: fn, lambda wl: 0.0)

    return {n: make(n, s) for n, s in durations.items()}, calls


def test_call_counts_follow_the_rule(clock):
    durations = {"1 ms": 1e-3, "0.2 s": 0.2, "3 s": 3.0, "6 s": 6.0}
    prepared, calls = _routes(clock, durations)
    out = R.time_round_robin(prepared, repeats=10, min_repeats=3, budget_s=8.0)
    timed = {n: len(out[n]["times_s"]) for n in durations}
    # 1 ms: 1 s of calls would be 1000, capped at 10 x repeats; 0.2 s: 10 calls pass 1 s;
    # 3 s and 6 s: the budget of 8 s stops them at min_repeats.
    assert timed == {"1 ms": 100, "0.2 s": 10, "3 s": 3, "6 s": 3}
    # An untimed call before every timed one below WARM_CALL_S (5 s); the 6 s route gets one
    # only before its first timed call.
    assert {n: calls.count(n) for n in durations} == {"1 ms": 200, "0.2 s": 20, "3 s": 6, "6 s": 4}
    for name, seconds in durations.items():
        assert out[name]["median_s"] == pytest.approx(seconds)


def test_every_timed_call_of_a_warm_route_follows_its_own_untimed_call(clock):
    prepared, calls = _routes(clock, {"a": 0.01, "b": 0.5, "c": 4.0})
    R.time_round_robin(prepared, repeats=10, min_repeats=3, budget_s=1e9)
    pairs = list(zip(calls[::2], calls[1::2], strict=True))
    assert all(first == second for first, second in pairs)
    assert len(pairs) == 100 + 10 + 10
