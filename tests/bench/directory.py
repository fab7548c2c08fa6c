"""The directory: patients searching "first free cardiologist" across thousands of doctors.

`prepare` seeds the doctors in ten time zones and ten specialties, with weekly hours and two appointment types, and a
fifth of next week's consultation slots booked; `load` reads, each at the same concurrency and for the same time:
the trivial endpoint (the baseline), the directory sorted by next free slot (a random specialty and instant each
time), and one doctor's 7-day slots, each read for a range never asked before (so the response cache cannot answer).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from service.core.settings import Settings
from tests.bench.load import Client, iso, ms_percentiles
from tests.bench.seed import SPECIALTIES, Seeder, next_monday


def prepare(settings: Settings, options: Any) -> dict[str, Any]:
    with Seeder(settings) as seeder:
        doctors = seeder.doctors(options.directory_doctors)
        patients = seeder.patients(options.directory_doctors)
        booked = seeder.book_fraction(doctors, patients, next_monday(), 7, 0.2)
    one = doctors[len(doctors) // 2]
    return {"specialties": sorted({d.specialty for d in doctors}), "doctors": len(doctors), "booked": len(booked),
            "one_doctor": one.id, "one_type": one.types["First visit"], "first_day": iso(
                datetime.combine(next_monday(), datetime.min.time())),
            "readers": options.directory_readers, "seconds": options.directory_seconds}


async def load(config: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    client = Client(config, session)
    rng = client.rng
    readers, seconds = config["readers"], config["seconds"]
    now = datetime.now(UTC).replace(second=0, microsecond=0)

    def search(specialty: str | None = None) -> str:
        after = now + timedelta(minutes=5 * rng.randrange(0, 12 * 24 * 7))  # within the coming week
        specialty = (specialty or rng.choice(config["specialties"] or SPECIALTIES)).replace(" ", "%20")
        return f"/doctors?specialty={specialty}&available_after={iso(after)}&sort=next_available&limit=20"

    first_day = datetime.fromisoformat(config["first_day"])

    def slots() -> str:  # a new range each time: a cache miss
        start = first_day + timedelta(seconds=rng.randrange(1, 86_400))
        return (f"/doctors/{config['one_doctor']}/slots?appointment_type_id={config['one_type']}"
                f"&from={iso(start)}&to={iso(start + timedelta(days=7))}")

    status, page = await client.call("GET", search())  # the answer is checked once: a full, ranked page
    assert status == 200 and len(page["items"]) == min(20, page["total"]), (status, page)
    # The first search of a specialty computes its doctors' coming week (the API's DirectoryCache cache), later ones
    # look it up: the cold ones are timed apart, one a specialty, and the readers measure a warm directory.
    cold = []
    for specialty in config["specialties"]:
        status, took = await client.timed_get(client.api, search(specialty))
        assert status == 200, status
        cold.append(took)
    trivial_rps, trivial = await client.read_rate(config["trivial_url"], lambda: "/ping", readers, seconds)
    search_rps, searched = await client.read_rate(client.api, search, readers, seconds)
    slots_rps, slot_reads = await client.read_rate(client.api, slots, readers, seconds)
    return {
        "doctors": config["doctors"], "booked_appointments": config["booked"], "readers": readers,
        "trivial_per_s": trivial_rps, "trivial_ms": ms_percentiles(trivial),
        "search_per_s": search_rps, "search_ms": ms_percentiles(searched),
        "ratio_search_to_trivial": search_rps / trivial_rps,
        "cold_search_ms": ms_percentiles(cold, (50, 100)),  # a specialty's first search, one each
        "p99_ms": ms_percentiles(searched)["99"],
        "slots_uncached_per_s": slots_rps, "slots_uncached_ms": ms_percentiles(slot_reads),
        "ratio_slots_to_trivial": slots_rps / trivial_rps,
    }
