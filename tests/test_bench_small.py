"""The benchmark, small: every request decided and no double booking, so `make bench` cannot rot.

It asserts correctness only; speed is for `make bench` to measure, not for a test to assert.
"""

from __future__ import annotations

from tests.bench.run import parse, run


def test_a_small_benchmark_run_decides_everything_without_double_booking(tmp_path) -> None:  # noqa: ANN001
    options = parse(["--workers", "2", "--doctors", "4", "--patients", "20", "--days", "2", "--requests", "150",
                     "--concurrency", "16", "--paced-seconds", "1", "--read-seconds", "0.5",
                     "--raw-bookings", "40", "--raw-concurrency", "2", "--out", str(tmp_path / "r.json")])
    result = run(options)
    counts = result["counts"]
    assert result["double_bookings"] == 0
    assert set(counts) <= {"confirmed", "rejected"}, counts  # no failed, no HTTP errors
    assert sum(counts.values()) == 150
    assert counts["confirmed"] >= 1 and counts.get("rejected", 0) >= 1  # the mix really contended
    assert result["paced"]["counts"].keys() <= {"confirmed", "rejected"}
    assert result["slots_per_s"] > 0 and result["slots_uncached_per_s"] > 0
    assert result["baseline_raw_bookings_per_s"] > 0
    cpu = result["cpu_ms_per_booking"]  # every process was found and measured
    assert cpu["API"] > 0 and cpu["worker"] > 0 and cpu["load generator"] > 0
    assert abs(cpu["total"] - sum(ms for name, ms in cpu.items() if name != "total")) < 1e-6
