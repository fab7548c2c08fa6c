"""The rush: a clinic network releases its slots at one instant and thousands of patients press "book" at once.

`prepare` seeds the doctors (a window each on one day, a 25-minute type with 5 minutes' buffer after: back-to-back
30-minute blocks) and the patients; `load` (in the load generator) holds every patient at a barrier, releases them
together, and each patient books its share of the attempts one after another, following each to its decision.
Every slot is asked for the same number of times (the attempts shuffled over the patients), so a slot lost by
everyone would be the service's doing. Fairness is checked afterwards from the database (tests/bench/checks.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from service.core.settings import Settings
from tests.bench.cpu import snapshot, spent
from tests.bench.load import Client, iso, ms_percentiles, token_for
from tests.bench.seed import Seeder

VACCINATION = {"name": "Vaccination", "duration_minutes": 25, "buffer_before_minutes": 0, "buffer_after_minutes": 5}
SLOT = timedelta(minutes=30)


def prepare(settings: Settings, options: Any) -> dict[str, Any]:
    """Seed the rush's clinic; the part of the loader's config that names it."""
    with Seeder(settings) as seeder:
        day = (datetime.now(UTC) + timedelta(days=3)).replace(hour=8, minute=0, second=0, microsecond=0, tzinfo=None)
        doctors = seeder.doctors(options.rush_doctors, zones=("UTC",), hours=(), types=(VACCINATION,))
        seeder.windows(doctors, [(day, day + SLOT * options.rush_slots)])
        patients = seeder.patients(options.rush_patients)
    return {"doctors": [{"id": d.id, "type_id": d.types["Vaccination"]} for d in doctors],
            "starts": [iso(day + SLOT * n) for n in range(options.rush_slots)],
            "patients": patients, "attempts": options.rush_attempts, "connections": options.rush_patients}


async def load(config: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    client = Client(config, session)
    slots = [(d["id"], d["type_id"], start) for d in config["doctors"] for start in config["starts"]]
    attempts = config["attempts"]
    targets = [slots[n % len(slots)] for n in range(attempts)]  # each slot asked for equally often
    client.rng.shuffle(targets)
    patients = [(p, token_for(p, "Patient")) for p in config["patients"]]
    shares = [targets[n::len(patients)] for n in range(len(patients))]
    release = asyncio.Event()
    results: list[dict[str, Any]] = []

    async def patient(token: str, share: list[tuple[int, int, str]]) -> None:
        await release.wait()
        for doctor_id, type_id, start in share:
            body = {"doctor_id": doctor_id, "appointment_type_id": type_id, "start_time": start}
            try:
                results.append(await client.submit_and_follow(token, "/appointments", body))
            except (aiohttp.ClientError, TimeoutError) as exc:
                results.append({"status": f"error_{type(exc).__name__}", "started": time.perf_counter()})

    tasks = [asyncio.create_task(patient(token, share)) for (_, token), share in zip(patients, shares, strict=True)]
    await asyncio.sleep(0.2)  # every patient waits at the barrier
    groups = {**config["cpu_groups"], "load generator": [os.getpid()]}
    cpu_before = snapshot(groups)
    released = time.perf_counter()
    release.set()
    await asyncio.gather(*tasks)
    finished = time.perf_counter()
    used = spent(cpu_before, snapshot(groups))
    counts: dict[str, int] = {}
    for r in results:
        key = r["status"] if r["status"] != "rejected" else f"rejected_{r['reason']}"
        counts[key] = counts.get(key, 0) + 1
    decided = [r for r in results if "decision" in r]
    return {
        "attempts": len(results),
        "slots": len(slots),
        "counts": counts,
        "confirmed": counts.get("confirmed", 0),
        "http_5xx": sum(n for k, n in counts.items() if k.startswith("http_5")),
        "undecided": len(results) - len(decided),
        "refused_at_once": sum(1 for r in results if r.get("refused_at_once")),
        "connection_retries": client.connection_retries,
        "seconds_to_last_decision": finished - released,
        "decided_per_s": len(decided) / max(finished - released, 1e-9),
        # where the rush's CPU went, per attempt decided, and each process's share of the time it lasted
        "cpu_ms_per_attempt": {name: seconds * 1000 / max(len(decided), 1) for name, seconds in used.items()},
        "cpu_busy_pct": {name: seconds * 100 / max(finished - released, 1e-9) for name, seconds in used.items()},
        "submit_ms": ms_percentiles([r["submit"] for r in results if "submit" in r]),
        "decision_ms": ms_percentiles([r["decision"] for r in decided]),
        # (seconds after the release the attempt was sent, its submit→decision in ms), for the plot
        "timeline": [(round(r["started"] - released, 4), round(r["decision"] * 1000, 2)) for r in decided],
    }
