"""Group commit (worker/groups.py): the booking jobs running at once in a worker decide their doctors in one
transaction. Each doctor's outcome is what a transaction of its own would give; a patient's booking with one doctor
is seen by the next doctor's decision; a group that fails, or a worker killed inside one, loses nothing.

The first tests drive a GroupCommit in this process, against requests stored by a real API on a database of this
module's own (the rig: no worker runs unless a test starts one); the last races the shared stack's processes.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pymysql
import pytest

from service.core import booking
from service.core.availability import OUTSIDE_AVAILABILITY, SLOT_TAKEN
from service.core.booking import PATIENT_BUSY, HoldPolicy
from service.core.db import Database
from tests.factory import Factory, User, at, iso
from tests.support import Rig, accepted_ids, no_overlapping_confirmed, settle, until
from worker import groups
from worker.groups import GroupCommit


@pytest.fixture
async def rig_db(rig: Rig) -> AsyncIterator[Database]:
    db = await Database.connect(rig.settings)
    yield db
    await db.close()


def group_of(db: Database) -> GroupCommit:
    return GroupCommit(db, batch_size=200, policy=HoldPolicy(), max_doctors=50)


async def store(factory: Factory, patient: User, doctor: User, start: float, end: float) -> int:
    [request_id] = accepted_ids([await factory.book(patient, doctor["id"], at(start), at(end))])
    return request_id


def outcomes(rig: Rig) -> dict[int, tuple[str, str | None]]:
    return {r["id"]: (r["status"], r["reason"]) for r in rig.rows("SELECT id, status, reason FROM booking_requests")}


async def test_one_transaction_decides_each_doctor_as_a_transaction_of_its_own_would(
    rig: Rig, rig_db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six doctors' requests in one group: a patient asking three doctors for the same hour gets the lowest doctor
    (decided first) and is busy for the others; two patients for one slot: the first stored wins; a reschedule moves
    an appointment of a doctor outside the group and below one in it (that doctor's lock is taken first, in order)."""
    api = rig.api()
    async with rig.client(api) as (http, factory):
        doctors = sorted([await factory.doctor() for _ in range(6)], key=lambda d: d["id"])
        for doctor in doctors:
            await factory.window(doctor, at(9), at(12))
        everywhere, first, second, outside, mover = [await factory.patient() for _ in range(5)]
        worker = rig.worker()  # the appointment the reschedule moves, with doctors[2], decided the usual way
        moved = await factory.booked(mover, doctors[2]["id"], at(9), at(9.5))
        rig.processes.stop(worker)

        busy = [await store(factory, everywhere, doctors[i], 10, 11) for i in (0, 1, 3)]
        winner = await store(factory, first, doctors[4], 10, 11)
        loser = await store(factory, second, doctors[4], 10, 11)
        closed = await store(factory, outside, doctors[5], 13, 14)
        response = await http.post(f"/appointments/{moved['id']}/reschedule", headers=mover.headers,
                                   json={"start_time": iso(at(11)), "doctor_id": doctors[0]["id"]})
        assert response.status_code == 202, response.text
        move = response.json()["request_id"]

    lock_orders = []  # a spy on the moving appointments' locks: a lower doctor found there starts the group over
    real = booking.lock_moving_appointments

    async def spied(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real(*args, **kwargs)
        except booking.LockOrder as order:
            lock_orders.append(order.doctor_ids)
            raise
    monkeypatch.setattr(booking, "lock_moving_appointments", spied)

    group = group_of(rig_db)
    in_group = [doctors[i]["id"] for i in (5, 4, 3, 1, 0)]  # not doctors[2], whose appointment moves
    decided = await asyncio.gather(*(group.decide(d) for d in in_group))

    assert group.transactions == 1 and group.decided_doctors == 5
    assert lock_orders == [{doctors[2]["id"]}]  # once: the second try locked it first
    assert [d.doctor_id for d in decided] == in_group  # each job gets its own doctor's decisions
    by_doctor = {d.doctor_id: d for d in decided}
    assert by_doctor[doctors[0]["id"]].freed_doctor_ids == [doctors[2]["id"]]
    assert {x.request_id for d in decided for x in d.decisions} == {*busy, winner, loser, closed, move}
    assert outcomes(rig) == {
        busy[0]: ("confirmed", None), busy[1]: ("rejected", PATIENT_BUSY), busy[2]: ("rejected", PATIENT_BUSY),
        winner: ("confirmed", None), loser: ("rejected", SLOT_TAKEN),
        closed: ("rejected", OUTSIDE_AVAILABILITY), move: ("confirmed", None),
        moved["booking_request_id"]: ("confirmed", None)}
    assert {(r["doctor_id"], r["status"]) for r in rig.rows(
        "SELECT doctor_id, status FROM appointments WHERE patient_id = %s", mover["id"])} == {
        (doctors[2]["id"], "rescheduled"), (doctors[0]["id"], "confirmed")}
    # Every decision has its history and its event, as a transaction of its own writes them.
    history = Counter(r["action"] for r in rig.rows("SELECT action FROM appointment_history"))
    assert history["rejected"] == 4 and history["confirmed"] == 4 and history["rescheduled"] == 1
    assert len(rig.rows("SELECT id FROM outbox_events")) == 1 + 7  # the first booking's, and the group's
    no_overlapping_confirmed(rig.mysql)


async def test_a_failed_group_fails_its_jobs_whose_doctors_then_go_alone(
    rig: Rig, rig_db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = rig.api()
    async with rig.client(api) as (_, factory):
        doctors = [await factory.doctor() for _ in range(2)]
        patient = await factory.patient()
        for doctor in doctors:
            await factory.window(doctor, at(9), at(12))
        requests = [await store(factory, patient, doctor, 9 + i, 10 + i) for i, doctor in enumerate(doctors)]

    async def failing(*args: object, **kwargs: object) -> None:  # the fault: the group's transaction fails
        raise ConnectionResetError("injected")

    group = group_of(rig_db)
    with monkeypatch.context() as patch:
        patch.setattr(groups, "decide_for_doctors", failing)
        failed = await asyncio.gather(*(group.decide(d["id"]) for d in doctors), return_exceptions=True)
    assert [type(f) for f in failed] == [ConnectionResetError, ConnectionResetError]
    assert group.suspects == {d["id"] for d in doctors}
    assert set(outcomes(rig).values()) == {("pending", None)}  # nothing half-done

    alone = await group.decide(doctors[0]["id"])  # its own transaction now, which succeeds
    assert [x.request_id for x in alone.decisions] == [requests[0]]
    assert group.suspects == {doctors[1]["id"]} and group.transactions == 1
    assert outcomes(rig)[requests[0]] == ("confirmed", None)


async def test_a_group_reading_more_ranges_than_a_statement_holds_reads_them_all(
    rig: Rig, rig_db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two ranges a statement here (RANGES_A_STATEMENT), requests on five days two apart (a range each, NEARBY being
    a day) and two with a second doctor of the group: four statements in the round trip, and what only the later ones
    read still decides (a slot taken on day 8, a patient busy with the other doctor on day 10), each doctor by its
    own windows (the other has one on day 10 only)."""
    monkeypatch.setattr(booking, "RANGES_A_STATEMENT", 2)
    api = rig.api()
    async with rig.client(api) as (_, factory):
        doctor, other = sorted([await factory.doctor() for _ in range(2)], key=lambda d: d["id"])
        asker, holder, busy = [await factory.patient() for _ in range(3)]
        for d in (2, 4, 6, 8, 10):
            await factory.window(doctor, at(9, d), at(12, d))
        await factory.window(other, at(9, 10), at(12, 10))
        worker = rig.worker()  # the appointments already there, decided the usual way
        await factory.booked(holder, doctor["id"], at(10, 8), at(11, 8))
        await factory.booked(busy, other["id"], at(10, 10), at(11, 10))
        rig.processes.stop(worker)

        async def store_on(patient: User, d: int, hour: float = 10) -> int:  # not the span just given away:
            [request_id] = accepted_ids([  # that one the API would refuse at once (KnownTaken)
                await factory.book(patient, doctor["id"], at(hour, d), at(hour + 1, d))])
            return request_id
        free = [await store_on(asker, d) for d in (2, 4, 6)]
        taken = await store_on(asker, 8, hour=10.5)
        clash = await store_on(busy, 10)
        [closed, open_] = accepted_ids([await factory.book(holder, other["id"], at(10, 2), at(11, 2)),
                                        await factory.book(asker, other["id"], at(9, 10), at(10, 10))])

    statements: list[int] = []
    real = booking.schedule_reads

    def counted(*args: Any) -> Any:
        reads = real(*args)
        statements.append(len(reads))
        return reads
    monkeypatch.setattr(booking, "schedule_reads", counted)

    group = group_of(rig_db)
    decided = await asyncio.gather(group.decide(doctor["id"]), group.decide(other["id"]))
    assert group.transactions == 1 and statements == [4]  # seven ranges (one a day and doctor), two a statement
    assert [{x.request_id for x in d.decisions} for d in decided] == [{*free, taken, clash}, {closed, open_}]
    found = outcomes(rig)
    assert [found[r] for r in free] == [("confirmed", None)] * 3
    assert found[taken] == ("rejected", SLOT_TAKEN) and found[clash] == ("rejected", PATIENT_BUSY)
    assert found[closed] == ("rejected", OUTSIDE_AVAILABILITY) and found[open_] == ("confirmed", None)
    no_overlapping_confirmed(rig.mysql)


async def test_a_job_of_a_doctor_already_waiting_shares_its_decision(rig: Rig, rig_db: Database) -> None:
    api = rig.api()
    async with rig.client(api) as (_, factory):
        doctor, patients = await factory.doctor(), [await factory.patient() for _ in range(2)]
        await factory.window(doctor, at(9), at(12))
        requests = [await store(factory, p, doctor, 10, 11) for p in patients]

    group = group_of(rig_db)
    first = asyncio.create_task(group.decide(doctor["id"]))
    await asyncio.sleep(0)  # the job is waiting; its transaction has not started
    shared = group.waiting_for(doctor["id"])
    assert shared is not None and group.serializes(doctor["id"])
    decided = await first
    assert await shared is decided and group.waiting_for(doctor["id"]) is None
    assert [(x.request_id, x.status) for x in decided.decisions] == [(requests[0], "confirmed"),
                                                                     (requests[1], "rejected")]


async def test_a_worker_killed_inside_a_group_transaction_commits_none_of_it(rig: Rig) -> None:
    """The group's writes for every doctor are rolled back together; a new worker decides them all."""
    api = rig.api()
    async with rig.client(api) as (_, factory):
        doctors = [await factory.doctor() for _ in range(5)]
        patients = [await factory.patient() for _ in range(3)]
        for doctor in doctors:
            await factory.window(doctor, at(9), at(12))
        accepted = [await store(factory, p, d, 10, 11) for d in doctors for p in patients]
    doomed = rig.worker(FAULT_POINT="before_commit")  # takes the queued jobs together
    await until(lambda: doomed.poll() is not None, "the worker to die at the fault point")
    assert doomed.returncode == -signal.SIGKILL
    assert set(outcomes(rig).values()) == {("pending", None)}
    assert rig.rows("SELECT id FROM appointments") == []

    rig.worker()
    decided = await settle(rig, accepted)
    # Each patient gets one 10:00 (three doctors' hours taken); which doctors depends on how the jobs meet again.
    assert decided[("confirmed", None)] == 3
    assert decided[("rejected", PATIENT_BUSY)] + decided[("rejected", SLOT_TAKEN)] == 12


async def test_patients_racing_many_doctors_over_api_and_worker_processes(
    stack: dict, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """Thirty patients each ask three of eight doctors for the same hour, through two API processes and three
    workers, whose jobs meet in groups: every doctor's hour goes to at most one patient and every patient gets at
    most one, and every rejection names a booking that exists (the slot's or the patient's)."""
    doctors = [await factory.doctor() for _ in range(8)]
    for doctor in doctors:
        await factory.window(doctor, at(9), at(12))
    patients = [await factory.patient() for _ in range(30)]
    rng = random.Random(11)
    asks = [(p, d) for p in patients for d in rng.sample(doctors, 3)]
    rng.shuffle(asks)
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for url in stack["apis"]]
    try:
        submitted = await asyncio.gather(*(factory.book(p, d["id"], at(10), at(11), client=clients[i % 2])
                                           for i, (p, d) in enumerate(asks)))
        # Stored (202) and decided by a worker, or refused at once (409: a time its API process heard was taken).
        assert {r.status_code for r in submitted} <= {202, 409}

        async def answer(response: httpx.Response, patient: User) -> dict:
            if response.status_code == 409:
                assert response.json()["reason"] == SLOT_TAKEN and "request_id" not in response.json()
                return {"status": "rejected", "reason": SLOT_TAKEN}
            polled = await clients[0].get(response.headers["location"], params={"wait": 30}, headers=patient.headers)
            return polled.json()

        answers = await asyncio.gather(*(answer(r, p) for r, (p, _) in zip(submitted, asks, strict=True)))
    finally:
        for c in clients:
            await c.aclose()
    assert all(a["status"] in ("confirmed", "rejected") for a in answers), answers
    won_by_doctor: dict[int, int] = Counter()
    won_by_patient: dict[int, int] = Counter()
    for a, (p, d) in zip(answers, asks, strict=True):
        if a["status"] == "confirmed":
            won_by_doctor[d["id"]] += 1
            won_by_patient[p["id"]] += 1
    assert max(won_by_doctor.values()) == 1 and max(won_by_patient.values()) == 1
    reasons: dict[str, list[tuple[User, User]]] = defaultdict(list)
    for a, ask in zip(answers, asks, strict=True):
        if a["status"] == "rejected":
            reasons[a["reason"]].append(ask)
    assert set(reasons) <= {SLOT_TAKEN, PATIENT_BUSY}
    assert all(won_by_doctor[d["id"]] for _, d in reasons[SLOT_TAKEN])
    assert all(won_by_patient[p["id"]] for p, _ in reasons[PATIENT_BUSY])
    assert len(won_by_doctor) == len(doctors)  # a doctor asked by 11 patients on average ends with one of them
    no_overlapping_confirmed(mysql)
