"""The benchmark, small: each scenario decides everything without a double booking, so `make bench` cannot rot.

They assert correctness only; speed is for `make bench` to measure, not for a test to assert. The last tests show
that the database checks the benchmark relies on do fail on a double booking (buffers included), a pending request
and an unfair rush.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from service.core.settings import Settings
from tests.bench import checks
from tests.bench.run import failures, parse, run, write
from tests.bench.seed import Seeder
from tests.support import scratch_database

SMALL = ["--workers", "1", "--doctors", "4", "--patients", "20", "--days", "2", "--requests", "150",
         "--concurrency", "16", "--paced-seconds", "1", "--read-seconds", "0.5", "--raw-bookings", "40",
         "--raw-concurrency", "2", "--rush-doctors", "3", "--rush-slots", "4", "--rush-patients", "40",
         "--rush-attempts", "240", "--directory-doctors", "60", "--directory-readers", "4",
         "--directory-seconds", "0.5", "--mixed-doctors", "6", "--mixed-patients", "30", "--mixed-rate", "40",
         "--mixed-seconds", "3", "--soak-seconds", "4", "--soak-warmup", "1"]


def small(scenario: str, tmp_path) -> dict:  # noqa: ANN001
    options = parse([*SMALL, "--scenario", scenario, "--out", str(tmp_path / "latest.json")])
    results = run(options)
    assert failures(results) == []
    write(results, options)
    figures = json.loads((tmp_path / "latest.json").read_text())["figures"]  # every figure by its dotted name
    assert figures[f"{scenario}.violations"] == [] and f"{scenario}.wall_seconds" in figures
    return results[scenario]


def test_steady_decides_everything_without_double_booking(tmp_path) -> None:  # noqa: ANN001
    result = small("steady", tmp_path)
    counts = result["counts"]
    assert result["database"]["double_bookings"] == 0 and result["database"]["pending"] == 0
    assert set(counts) <= {"confirmed", "rejected"}, counts  # no failed, no HTTP errors
    assert sum(counts.values()) == 150
    assert counts["confirmed"] >= 1 and counts.get("rejected", 0) >= 1  # the mix really contended
    assert result["paced"]["counts"].keys() <= {"confirmed", "rejected"}
    assert result["slots_per_s"] > 0 and result["slots_uncached_per_s"] > 0
    assert result["baseline_raw_bookings_per_s"] > 0
    cpu = result["cpu_ms_per_booking"]  # every process was found and measured
    assert cpu["API"] > 0 and cpu["worker"] > 0 and cpu["load generator"] > 0
    assert abs(cpu["total"] - sum(ms for name, ms in cpu.items() if name != "total")) < 1e-6


def test_rush_fills_every_slot_once_for_the_earliest_eligible_request(tmp_path) -> None:  # noqa: ANN001
    result = small("rush", tmp_path)
    assert result["attempts"] == 240 and result["undecided"] == 0 and result["http_5xx"] == 0
    assert result["confirmed"] == result["slots"] == 12
    assert result["database"]["confirmed_appointments"] == 12
    # A slot is contested when several requests for it were stored (the rest were refused at once, unstored).
    assert 0 < result["contested_slots"] <= 12 and result["fairness_violations"] == 0
    lost = sum(n for outcome, n in result["counts"].items() if outcome != "confirmed")
    assert lost == 228 and result["refused_at_once"] <= result["counts"]["rejected_slot_taken"]
    assert (tmp_path / "latest.png").stat().st_size > 0


def test_directory_search_and_uncached_slots_answer(tmp_path) -> None:  # noqa: ANN001
    result = small("directory", tmp_path)
    assert result["doctors"] == 60 and result["booked_appointments"] == 60 * 70 // 5  # a fifth of next week
    assert result["search_per_s"] > 0 and result["slots_uncached_per_s"] > 0 and result["trivial_per_s"] > 0


def test_mixed_day_has_no_errors(tmp_path) -> None:  # noqa: ANN001
    result = small("mixed", tmp_path)
    ops = result["operations"]
    assert result["errors"] == 0 and result["operations_total"] == 120
    assert ops["read"]["count"] > 0 and ops["book"]["count"] > 0
    assert isinstance(ops["reschedule"], str) or ops["reschedule"]["errors"] == 0  # measured once it exists


def test_soak_reports_memory_and_each_minute(tmp_path) -> None:  # noqa: ANN001
    result = small("soak", tmp_path)
    assert result["errors"] == 0 and result["pending"] == 0
    assert result["rss_start_mib"]["API"] > 0 and result["rss_end_mib"]["worker"] > 0
    assert len(result["p99_ms_per_minute"]) == 1


# --- the checks themselves -----------------------------------------------------------------------------------

@pytest.fixture
def seeded(settings: Settings):  # noqa: ANN201
    with scratch_database(settings, "bench_checks") as url:
        yield Settings.from_env({"APP_ENV": "test", "DATABASE_URL": url})


def test_the_checks_find_an_overlap_made_only_by_buffers_and_a_pending_request(seeded: Settings) -> None:
    with Seeder(seeded) as seeder:
        doctor, = seeder.doctors(1)
        first, second = seeder.patients(2)
        start = datetime(2031, 1, 6, 9)
        seeder.appointments([(doctor, first, start), (doctor, second, start + timedelta(minutes=30))])
    state = checks.database_state(seeded)
    assert state["double_bookings"] == 0 and checks.violations_of(state) == []
    with Seeder(seeded) as seeder:  # the first one's buffer after now reaches into the second
        seeder.conn.cursor().execute("UPDATE appointments SET buffer_after_minutes = 5 WHERE patient_id = %s",
                                     (first,))
        seeder.conn.cursor().execute("UPDATE booking_requests SET status = 'pending' WHERE patient_id = %s",
                                     (second,))
    state = checks.database_state(seeded)
    assert state["double_bookings"] == 1 and state["pending"] == 1
    assert len(checks.violations_of(state)) == 2


def test_the_checks_find_a_live_hold_over_an_appointment(seeded: Settings) -> None:
    """Slot holds come with the lifecycle work; until its migration lands here, a table with the columns it reads."""
    with Seeder(seeded) as seeder:
        doctor, = seeder.doctors(1)
        patient, = seeder.patients(1)
        start = datetime(2031, 1, 6, 9)
        seeder.appointments([(doctor, patient, start)])
        cursor = seeder.conn.cursor()
        cursor.execute("""CREATE TABLE IF NOT EXISTS holds (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
            doctor_id BIGINT UNSIGNED NOT NULL, patient_id BIGINT UNSIGNED NOT NULL, start_time DATETIME(6) NOT NULL,
            end_time DATETIME(6) NOT NULL, buffer_before_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
            buffer_after_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0, status VARCHAR(16) NOT NULL DEFAULT 'held',
            expires_at DATETIME(6) NOT NULL, created_at DATETIME(6) NOT NULL)""")
        hold = ("INSERT INTO holds (doctor_id, patient_id, start_time, end_time, buffer_before_minutes, status,"
                " expires_at, created_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP() + INTERVAL %s MINUTE,"
                " UTC_TIMESTAMP())")
        later = start + timedelta(minutes=30)
        cursor.execute(hold, (doctor.id, patient, later, later + timedelta(minutes=30), 0, "held", 5))  # touching
        cursor.execute(hold, (doctor.id, patient, later, later + timedelta(minutes=30), 5, "held", -1))  # expired
        cursor.execute(hold, (doctor.id, patient, later, later + timedelta(minutes=30), 5, "released", 5))
    assert checks.database_state(seeded)["double_bookings"] == 0
    with Seeder(seeded) as seeder:  # a live one whose buffer before reaches into the appointment
        seeder.conn.cursor().execute(hold, (doctor.id, patient, later, later + timedelta(minutes=30), 5, "held", 5))
    state = checks.database_state(seeded)
    assert state["double_bookings"] == 1 and state["double_booking_pairs"]["hold"]


def test_fairness_counts_a_later_winner_but_not_a_busy_patient(seeded: Settings) -> None:
    start = datetime(2031, 1, 6, 9)

    def turned_down(seeder: Seeder, doctor_id: int, at: datetime, rows: list[tuple[int, str]]) -> None:
        seeder.conn.cursor().executemany(
            "INSERT INTO booking_requests (id, patient_id, doctor_id, start_time, end_time, status, reason, created_at)"
            " VALUES (%s, %s, %s, %s, %s, 'rejected', %s, NOW())",
            [(seeder._ids("booking_requests", 1)[0], p, doctor_id, at, at + timedelta(minutes=30), reason)
             for p, reason in rows])

    with Seeder(seeded) as seeder:
        doctor, = seeder.doctors(1)
        patients = seeder.patients(3)
        turned_down(seeder, doctor.id, start, [(patients[0], "patient_busy")])  # stored first, but busy
        seeder.appointments([(doctor, patients[2], start)])
        turned_down(seeder, doctor.id, start, [(patients[1], "slot_taken")])
    fair = checks.fairness(seeded)
    assert fair["contested_slots"] == 1 and fair["fairness_violations"] == 0
    with Seeder(seeded) as seeder:  # another slot, won by a request stored after one turned down for its sake
        later = start + timedelta(hours=1)
        turned_down(seeder, doctor.id, later, [(patients[1], "slot_taken")])
        seeder.appointments([(doctor, patients[0], later)])
    fair = checks.fairness(seeded)
    assert fair["contested_slots"] == 2 and fair["fairness_violations"] == 1
