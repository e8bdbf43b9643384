"""The benchmark harness (benchmarks/run.py): its timing rule, and what it records of the run.

The timing rule runs on a simulated clock. Each fake route advances the clock by its own
duration per call, so the number of calls the harness makes follows from its rule alone:
repeats, the 1 s minimum for fast routes (capped), the route budget, and an untimed call before
each timed one for routes under ``WARM_CALL_S``. Importing ``benchmarks.run`` turns x64 on,
which ``conftest.py`` has already done.
"""

import subprocess
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


# --- what a run records about the machine and the code ---------------------------------------

_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx512f

processor\t: 1
cpu family\t: 25
model\t\t: 17
model name\t: Other CPU
"""


def test_cpu_identity_reads_the_first_processor():
    assert R.cpu_identity(_CPUINFO) == {"cpu": "AMD EPYC", "family": "26", "model": "2"}
    assert R.cpu_identity("model name\t: X\n") == {"cpu": "X", "family": None, "model": None}


def test_cpu_caches_reads_data_and_unified_caches(tmp_path):
    for i, (level, kind, size) in enumerate(
        [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"),
         ("3", "Unified", "32M")]
    ):  # fmt: skip
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert R.cpu_caches(tmp_path) == {"L1d": 48 * 2**10, "L2": 2**20, "L3": 32 * 2**20}
    assert R.cpu_caches(tmp_path / "absent") == {}


def test_the_header_names_the_cpu_generation_and_caches():
    m = {"cpu_family": "26", "cpu_model": "2", "caches": {"L1d": 48 * 2**10, "L2": 2**20}}
    assert R._describe_cpu(m) == " (family 26, model 2; caches of a core: L1d 48 KiB, L2 1 MiB)"
    assert R._describe_cpu({}) == ""  # results recorded before these fields
    m = {"huge_pages": {"thp": "madvise", "glibc_hugetlb": None}}
    assert R._describe_cpu(m) == " (transparent huge pages madvise, glibc.malloc.hugetlb unset)"


def test_huge_pages_reads_the_kernel_mode_and_the_glibc_tunable(tmp_path):
    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    tunables = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert R.huge_pages(enabled, tunables) == {"thp": "madvise", "glibc_hugetlb": "1"}
    assert R.huge_pages(enabled, "glibc.malloc.arena_max=2") == {
        "thp": "madvise",
        "glibc_hugetlb": None,
    }
    assert R.huge_pages(tmp_path / "absent", "") == {"thp": None, "glibc_hugetlb": None}


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_git_revision_records_the_commit_and_uncommitted_changes(tmp_path):
    assert R.git_revision(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert R.git_revision(tmp_path) == {"commit": sha, "dirty": False}
    (tmp_path / "results.json").write_text("{}")  # untracked output: the code is unchanged
    assert R.git_revision(tmp_path) == {"commit": sha, "dirty": False}
    (tmp_path / "code.py").write_text("x = 2\n")
    assert R.git_revision(tmp_path) == {"commit": sha, "dirty": True}
    assert R._describe_git(R.git_revision(tmp_path)) == (
        f"jaxjac at commit {sha[:12]}, with uncommitted changes to tracked files"
    )


def test_target_ratios_are_rounded_down_so_a_miss_never_reads_as_the_threshold():
    assert R._fmt_ratio(2.08 / 2.20) == "0.94"  # 0.945 against the 0.95 target: a FAIL
    assert R._fmt_ratio(0.29) == "0.29"  # 0.29 * 100 is 28.999... in binary
    assert R._fmt_ratio(4.0) == "4.00"
    assert R._fmt_ratio(None) == "-"
    assert R._fmt_ratio(float("nan")) == "-"


def _record(route: str, family: str, seconds: float, floor_s: float = 0.45) -> dict:
    return {
        "net": "wide",
        "task": "hessian",
        "route": route,
        "family": family,
        "batch": R.TARGET_BATCH,
        "dtype": R.TARGET_DTYPE,
        "status": "ok",
        "median_s": seconds,
        "floor_s": floor_s,
    }


def test_hessian_targets_are_judged_with_and_without_out():
    records = [
        _record("jaxjac auto", "jaxjac", 1.0),
        _record("jaxjac auto, out=", "jaxjac", 0.8),
        _record("vmap(hessian)", "naive", 3.6),
        _record("torch vmap(hessian)", "torch", 9.0),
    ]
    rows = {(t["route"], t["target"]): t for t in R.evaluate_targets(records, {})}
    fresh = rows[("jaxjac auto", "≥ 4x faster than vmap(hessian)")]
    reused = rows[("jaxjac auto, out=", "≥ 4x faster than vmap(hessian)")]
    assert (fresh["ratio"], fresh["status"]) == (pytest.approx(3.6), "FAIL")
    assert (reused["ratio"], reused["status"]) == (pytest.approx(4.5), "PASS")
    floor = rows[("jaxjac auto, out=", "within 2x of the FLOP floor")]
    assert (floor["ratio"], floor["status"]) == (pytest.approx(0.45 / 0.8), "PASS")
    assert rows[("jaxjac auto", "within 2x of the FLOP floor")]["status"] == "FAIL"
    assert rows[("jaxjac auto, out=", "≥ 8x faster than torch")]["status"] == "PASS"  # 11.25x
