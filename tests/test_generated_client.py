"""The OpenAPI document as clients use it: a client generated from it by openapi-python-client, without a warning,
walks a patient through a booking; each operation says who may call it; query times are date-times; every body and
main answer carries an example that fits its schema."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, get_args, get_type_hints
from zoneinfo import ZoneInfo

import httpx
import pytest
from jsonschema_rs import Draft202012Validator  # schemathesis's validator

from tests.factory import at

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "clinic_client"  # the generated package's name, as imported here
BEARER = [{"BearerToken": []}]
PUBLIC_OPERATIONS = {"register", "login", "forgotPassword", "resetPassword", "listDoctors", "getDoctor",
                     "getDoctorAvailability", "getDoctorSlots", "getWeeklyHours", "listAppointmentTypes", "health",
                     "readCalendarFeed"}
QUERY_TIMES = {"from", "to", "available_after"}


def operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for methods in document["paths"].values():
        yield from methods.values()


@pytest.fixture(scope="module")
def document(api_url: str) -> dict[str, Any]:
    return httpx.get(f"{api_url}/schema/openapi.json", timeout=30).json()


@pytest.fixture(scope="module")
def generation(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, int]]:
    """A client generated from the live document: where it is, what the generator said, and its exit status."""
    out = tmp_path_factory.mktemp("generated")
    spec = out / "openapi.json"
    spec.write_text(json.dumps(document))
    # The generator formats what it writes with ruff (its post hooks), found on PATH: this virtualenv's.
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(out / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    sys.path.insert(0, str(out))
    yield out, result.stdout + result.stderr, result.returncode
    sys.path.remove(str(out))
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_the_generator_has_nothing_to_say_about_the_document(generation: tuple[Path, str, int]) -> None:
    """openapi-python-client says only where it wrote the client: no warning, no model or endpoint left out."""
    out, said, status = generation
    assert status == 0, said
    assert said.strip().splitlines() == [f"Generating {out / PACKAGE}"], said


def api(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def models() -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.models")


def parsed(response: Any, status: int, model: str) -> Any:
    """The body of a generated client's detailed response, asserted to have this status and to parse as `model`."""
    assert response.status_code == status, response.content
    assert type(response.parsed).__name__ == model, response.parsed
    return response.parsed


async def test_a_generated_client_walks_a_patient_through_a_booking(
    generation: tuple[Path, str, int], document: dict[str, Any], api_url: str, client: httpx.AsyncClient,
) -> None:
    """Register a doctor (in Berlin) and a patient, log in, publish a window, find the doctor in the directory,
    read the slots, book one with `Prefer: wait=5`, follow the booking request, cancel: every call through the
    generated client's functions, every answer a parsed model."""
    _, said, status = generation
    assert status == 0, said
    generated = importlib.import_module(PACKAGE)
    m = models()
    register, login = api("accounts.register"), api("accounts.login")
    add_availability, list_doctors = api("doctors.add_availability"), api("doctors.list_doctors")
    get_doctor_slots = api("doctors.get_doctor_slots")
    book_appointment, cancel_appointment = api("appointments.book_appointment"), api("appointments.cancel_appointment")
    list_my_appointments = api("appointments.list_my_appointments")
    get_booking_request = api("booking_requests.get_booking_request")

    # Public operations take a client without a token; the others one with.
    for function, public in ((register.asyncio_detailed, True), (get_doctor_slots.asyncio_detailed, True),
                             (book_appointment.asyncio_detailed, False), (add_availability.asyncio_detailed, False)):
        accepted = get_args(get_type_hints(function)["client"]) or (get_type_hints(function)["client"],)
        assert (generated.Client in accepted) is public, (function.__module__, accepted)
    # Every time zone is a member of its own, named as the document names it.
    zones = document["components"]["schemas"]["TimeZoneName"]
    assert {member.name: member.value for member in m.TimeZoneName} == dict(zip(zones["x-enum-varnames"],
                                                                              zones["enum"], strict=True))

    anyone = generated.Client(base_url=api_url, raise_on_unexpected_status=True, timeout=httpx.Timeout(30))
    password = "correct-horse-42"
    doctor = parsed(await register.asyncio_detailed(client=anyone, body=m.RegisterIn(
        email="ada.weber@clinic.example", name="Dr Ada Weber", role=m.RegisterInRole.DOCTOR, password=password,
        specialty="Cardiology", timezone=m.TimeZoneName.EUROPE_BERLIN)), 201, "UserOut")
    patient = parsed(await register.asyncio_detailed(client=anyone, body=m.RegisterIn(
        email="pat.jones@example.com", name="Pat Jones", role=m.RegisterInRole.PATIENT, password=password)),
        201, "UserOut")
    assert (doctor.role, patient.role) == ("Doctor", "Patient")

    def signed_in(token: Any) -> Any:
        assert token.token_type == "bearer" and token.expires_in > 0
        return generated.AuthenticatedClient(base_url=api_url, token=token.access_token,
                                             raise_on_unexpected_status=True, timeout=httpx.Timeout(30))

    as_doctor = signed_in(parsed(await login.asyncio_detailed(
        client=anyone, body=m.LoginIn(email="ada.weber@clinic.example", password=password)), 200, "TokenOut"))
    as_patient = signed_in(parsed(await login.asyncio_detailed(
        client=anyone, body=m.LoginIn(email="pat.jones@example.com", password=password)), 200, "TokenOut"))

    start, end = at(9), at(12)
    window = parsed(await add_availability.asyncio_detailed(
        client=as_doctor, body=m.WindowIn(start_time=start, end_time=end)), 201, "WindowOut")
    assert (window.doctor_id, window.start_time, window.end_time) == (doctor.id, start, end)

    directory = parsed(await list_doctors.asyncio_detailed(
        client=anyone, q="Weber", available_after=start - timedelta(days=1)), 200, "DoctorPage")
    assert directory.total == 1
    (found,) = directory.items
    assert (found.id, found.name, found.timezone) == (doctor.id, "Dr Ada Weber", "Europe/Berlin")
    assert found.next_available_slot.start_time == start

    slots = parsed(await get_doctor_slots.asyncio_detailed(
        doctor.id, client=anyone, from_=start, to=end, duration=30), 200, "SlotsOut")
    assert [slot.start_time for slot in slots.slots] == [start + timedelta(minutes=30 * i) for i in range(6)]
    chosen = slots.slots[2]
    berlin = chosen.start_time.astimezone(ZoneInfo("Europe/Berlin"))
    assert chosen.local_start_time == chosen.start_time
    assert chosen.local_start_time.utcoffset() == berlin.utcoffset()

    appointment = parsed(await book_appointment.asyncio_detailed(
        client=as_patient, prefer="wait=5",
        body=m.BookingIn(doctor_id=doctor.id, start_time=chosen.start_time, end_time=chosen.end_time,
                         notes="Follow-up on the blood test")), 201, "AppointmentOut")
    assert (appointment.doctor_id, appointment.patient_id) == (doctor.id, patient.id)
    assert (appointment.start_time, appointment.end_time) == (chosen.start_time, chosen.end_time)
    assert appointment.status == m.AppointmentOutStatus.CONFIRMED

    request = parsed(await get_booking_request.asyncio_detailed(
        appointment.booking_request_id, client=as_patient, wait=5), 200, "BookingRequestOut")
    assert (request.status, request.appointment_id) == (m.BookingRequestOutStatus.CONFIRMED, appointment.id)
    assert request.decided_at is not None and request.decided_at.tzinfo is not None

    slots = parsed(await get_doctor_slots.asyncio_detailed(
        doctor.id, client=anyone, from_=start, to=end, duration=30), 200, "SlotsOut")
    assert chosen.start_time not in [slot.start_time for slot in slots.slots]

    cancelled = parsed(await cancel_appointment.asyncio_detailed(appointment.id, client=as_patient),
                       200, "AppointmentOut")
    assert cancelled.status == m.AppointmentOutStatus.CANCELLED
    assert cancelled.cancelled_by == patient.id and cancelled.cancelled_at <= datetime.now(UTC)
    mine = parsed(await list_my_appointments.asyncio_detailed(
        client=as_patient, status=m.ListMyAppointmentsStatus.CANCELLED), 200, "AppointmentPage")
    assert [(a.id, a.status) for a in mine.items] == [(appointment.id, "cancelled")] and mine.total == 1
    slots = parsed(await get_doctor_slots.asyncio_detailed(
        doctor.id, client=anyone, from_=start, to=end, duration=30), 200, "SlotsOut")
    assert chosen.start_time in [slot.start_time for slot in slots.slots]  # free again


def test_each_operation_says_who_may_call_it(document: dict[str, Any]) -> None:
    """Bearer on every operation that needs a token; no security at all (`[]`) on the public ones, not `[{}]`
    ("optional"), which makes a generated client demand a token for them."""
    security = {op["operationId"]: op.get("security") for op in operations(document)}
    assert {name for name, required in security.items() if required == []} == PUBLIC_OPERATIONS
    assert all(required == BEARER for name, required in security.items() if name not in PUBLIC_OPERATIONS), security
    assert document["components"]["securitySchemes"]["BearerToken"]["scheme"] == "Bearer"


def test_query_times_are_date_times(document: dict[str, Any]) -> None:
    times = [(op["operationId"], parameter) for op in operations(document) for parameter in op.get("parameters", [])
             if parameter["in"] == "query" and parameter["name"] in QUERY_TIMES]
    assert {parameter["name"] for _, parameter in times} == QUERY_TIMES
    for operation_id, parameter in times:
        schema = parameter["schema"]
        assert (schema["type"], schema["format"]) == ("string", "date-time"), (operation_id, parameter)
        assert "oneOf" not in schema, (operation_id, parameter)


def schemas_of(op: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The schemas of an operation's body and of its successful answers that have a body."""
    for media in op.get("requestBody", {}).get("content", {}).values():
        yield "body", media["schema"]
    for status, response in op["responses"].items():
        if status.startswith("2"):
            for media in response.get("content", {}).values():
                yield status, media["schema"]


def test_every_body_and_main_answer_has_an_example_that_fits_its_schema(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]

    def examples(schema: dict[str, Any]) -> list[Any]:
        """The examples a schema offers: its own, its component's, or one of each kind (a body of one or several)."""
        if "$ref" in schema:
            return examples(components[schema["$ref"].rsplit("/", 1)[-1]])
        if "oneOf" in schema:
            return [example for kind in schema["oneOf"] for example in examples(kind)]
        if schema.get("type") == "array":
            return [[example] for example in examples(schema["items"])]
        return schema.get("examples", [])

    def fits(example: Any, schema: dict[str, Any]) -> list[str]:
        validator = Draft202012Validator({**schema, "components": document["components"]}, validate_formats=True)
        return [error.message for error in validator.iter_errors(example)]

    for op in operations(document):
        for where, schema in schemas_of(op):
            offered = examples(schema)
            kinds = len(schema.get("oneOf", [schema]))
            assert len(offered) >= kinds, (op["operationId"], where, schema)
            for example in offered:
                assert not fits(example, schema), (op["operationId"], where, example, fits(example, schema))
    for name, schema in components.items():  # nested ones too (a slot, a weekly interval)
        for example in schema.get("examples", []):
            assert not fits(example, schema), (name, example, fits(example, schema))
