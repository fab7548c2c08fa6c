"""Abuse: the whole API fuzzed from its OpenAPI document with schemathesis, forged tokens, other users' ids,
oversized and odd bodies, SQL metacharacters and Unicode in every string field, and times at the edges of the
calendar. Every bad input gets a clear 4xx problem (or is taken exactly as sent), never a 5xx, and loses nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pymysql
import pytest
from litestar import get
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import HTTPRouteHandler

from service.api.app import create_app
from service.api.extensions import decode_body
from service.api.security import PUBLIC
from service.core.db import Database
from service.core.errors import InvalidInput
from service.core.settings import Settings
from tests.factory import PASSWORD, Factory, User, at, day, iso
from tests.support import Processes, problem, rows, snapshot

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
JSON = {"content-type": "application/json"}
HUGE_INTEGER = b"9" * 5_000  # past Python's 4,300-digit limit for int(str)


def unauthenticated(response: httpx.Response) -> None:
    problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def assert_tables_intact(mysql: pymysql.Connection) -> None:
    tables = {next(iter(row.values())) for row in rows(mysql, "SHOW TABLES")}
    assert {"users", "availabilities", "booking_requests", "appointments", "password_reset_tokens"} <= tables


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- 1. schemathesis: every operation, every check ---------------------------------------------------------------

# Operations only a doctor may call; every other operation that needs a token is called with a patient's.
DOCTOR_OPERATIONS = ["updateMyDoctorProfile", "addAvailability", "deleteAvailability", "listMyDoctorAppointments",
                     "replaceMyWeeklyHours", "addTimeOff", "listMyTimeOff", "deleteTimeOff", "createAppointmentType",
                     "updateAppointmentType", "deactivateAppointmentType", "setAppointmentStatus", "createWebhook",
                     "listWebhooks", "deleteWebhook", "listWebhookDeliveries"]
PATIENT_OPERATIONS = ["bookAppointment", "listBookingRequests", "getBookingRequest", "getCurrentUser",
                      "listMyAppointments", "getAppointment", "cancelAppointment", "rescheduleAppointment",
                      "getAppointmentHistory", "createCalendarFeed", "listCalendarFeeds", "deleteCalendarFeed",
                      "holdSlot", "getHold", "confirmHold", "releaseHold", "joinWaitlist", "listWaitlist",
                      "leaveWaitlist"]
# Any doctor's schedule, called with a staff member's token (a doctor may call them too, for themselves only).
STAFF_OPERATIONS = ["findPatient", "replaceWeeklyHours", "addDoctorTimeOff", "listDoctorTimeOff", "deleteDoctorTimeOff",
                    "createDoctorAppointmentType", "updateDoctorAppointmentType", "deactivateDoctorAppointmentType"]
# Operations with rules a JSON Schema cannot state, which schema-valid data can break (a 400 naming the field):
# times relative to now or to each other (in the future, end after start, `to` after `from`, at most 24 hours or
# 62 days), a password's 8 to 72 bytes (the schema counts characters), a doctor's cancel needs a reason, a reset
# token must exist, a webhook's URL must reach a public address, one user holds at most 20 webhooks and 10 calendar
# feeds. Only here may the positive_data_acceptance check see a 400.
SEMANTIC_400 = ["register", "resetPassword", "addAvailability", "bookAppointment", "cancelAppointment",
                "rescheduleAppointment", "setAppointmentStatus",
                "listMyAppointments", "listMyDoctorAppointments", "getDoctorAvailability", "getDoctorSlots",
                "replaceMyWeeklyHours", "addTimeOff", "createAppointmentType", "updateAppointmentType",
                "replaceWeeklyHours", "addDoctorTimeOff", "createDoctorAppointmentType", "updateDoctorAppointmentType",
                "createWebhook", "createCalendarFeed", "holdSlot", "joinWaitlist"]
# Strings that break naive SQL, LIKE patterns, logs, terminals and UTF-8 handling.
NASTY_STRINGS = [
    "'; DROP TABLE users; --", '" OR 1=1 --', "%_\\", "Robert'); DELETE FROM appointments;--", "\\'\\\"\\\\",
    "😀🩺 Dr. Emoji", "د. مرحبا עברית", "\u202egnp.exe", "a\u0000b", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "<script>alert(1)</script>",
    "${jndi:ldap://x/}", "\t\n\r", "0x00 NULL null None", "𝓤𝓷𝓲𝓬𝓸𝓭𝓮",
]
STRING_FIELDS = ["body.name", "body.specialty", "body.notes", "body.token", "query.q", "query.specialty",
                 "query.reason"]


def toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings, numbers, booleans and arrays are TOML too


async def seed(factory: Factory) -> dict[str, Any]:
    """A doctor with a window and a patient with a confirmed appointment in it, and values for schemathesis to mix
    into what it draws, so that ids hit, logins work and some windows and bookings are in the future."""
    doctor, patient = await factory.doctor(specialty="Cardiology"), await factory.patient()
    window = await factory.window(doctor, at(9), at(17))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(10.5))
    appointment_type = await factory.appointment_type(doctor, duration_minutes=30, buffer_after_minutes=10)
    time_off = await factory.time_off(doctor, at(9, offset=20), at(17, offset=20))
    staff = await factory.staff()
    held = await factory.client.post("/holds", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": iso(at(11)), "end_time": iso(at(11.5))})
    entry = await factory.client.post("/waitlist", headers=patient.headers, json={
        "doctor_id": doctor["id"], "not_before": iso(at(8, offset=3)), "not_after": iso(at(9, offset=3))})
    assert (held.status_code, entry.status_code) == (201, 201), (held.text, entry.text)
    return {"doctor": doctor, "patient": patient, "staff": staff, "dictionaries": {
        "hold_id": [held.json()["id"]], "entry_id": [entry.json()["id"]],
        "doctor_id": [doctor["id"]], "availability_id": [window["id"]], "appointment_id": [appointment["id"]],
        "type_id": [appointment_type["id"]], "time_off_id": [time_off["id"]],
        "request_id": [appointment["booking_request_id"]], "patient_id": [patient["id"]],
        "times": [iso(at(hour, offset=3)) for hour in (0, 8, 9, 9.5, 10, 12, 17, 23.75, 24)],
        "emails": [doctor["email"], patient["email"]], "passwords": [PASSWORD, "'; DROP TABLE users; --"],
        "nasty": NASTY_STRINGS,
    }}


def schemathesis_config(seeded: dict[str, Any], with_tokens: bool) -> str:
    """schemathesis.toml: every check, deterministic generation (the same cases every run), seeded values mixed
    into the drawn ones; with_tokens, each operation gets its role's token; without, no token at all."""
    lines = ["[checks]", "enabled = true",  # every check schemathesis has
             "[auth]", "auto-signup = false",  # or it signs up and logs in by itself, and no run is token-less
             "[generation]", "deterministic = true", 'database = "none"', "max-examples = 50",
             # With tokens, Authorization is ours alone (schemathesis still probes without one and with a bad one).
             f"with-security-parameters = {toml(not with_tokens)}"]
    for name, values in seeded["dictionaries"].items():
        lines += [f"[dictionaries.{name}]", f"values = {toml(values)}"]
    bindings = {f"path.{name}": name for name in ("doctor_id", "availability_id", "appointment_id", "request_id",
                                                   "type_id", "time_off_id", "hold_id", "entry_id")}
    bindings |= {"body.doctor_id": "doctor_id", "body.email": "emails", "body.password": "passwords",
                 "body.appointment_type_id": "type_id", "query.appointment_type_id": "type_id",
                 "body.patient_id": "patient_id", "query.email": "emails"}
    bindings |= {f"body.{items}{field}": "times" for items in ("", "[*].") for field in ("start_time", "end_time")}
    bindings |= {"body.not_before": "times", "body.not_after": "times"}
    bindings |= dict.fromkeys(STRING_FIELDS, "nasty")
    lines += ["[parameters]"]
    lines += [f'"{key}" = {{ dictionary = "{name}", probability = {0.3 if name == "nasty" else 0.5} }}'
              for key, name in bindings.items()]
    if with_tokens:
        for operations, user in ((DOCTOR_OPERATIONS, seeded["doctor"]), (PATIENT_OPERATIONS, seeded["patient"]),
                                 (STAFF_OPERATIONS, seeded["staff"])):
            lines += ["[[operations]]", f"include-operation-id = {toml(operations)}",
                      f"headers = {{ Authorization = {toml(user.headers['Authorization'])} }}"]
    # DELETE /appointments/{id} cancels, DELETE /holds/{id} releases: what they end stays readable, with its status
    # (README), so use_after_free, which wants a 404 once a DELETE succeeded, does not apply to reading it.
    lines += ["[[operations]]", 'include-operation-id = ["getAppointment", "getHold"]',
              "checks.use_after_free.enabled = false"]
    lines += ["[[operations]]", f"include-operation-id = {toml(SEMANTIC_400)}",
              "checks.positive_data_acceptance.expected-statuses = "
              + toml(["2xx", "3xx", "400", "401", "403", "404", "409", "429"])]
    return "\n".join(lines) + "\n"


def statuses_by_operation(har: dict[str, Any], spec: dict[str, Any]) -> dict[str, Counter[int]]:
    """The statuses each documented operation answered in a HAR recording."""
    operations = []
    for path, methods in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        operations += [(method.upper(), path.count("{"), pattern, op["operationId"])
                       for method, op in methods.items()]
    # Fewest parameters first: /doctors/me/time-off/{id} before /doctors/{doctor_id}/time-off/{id}
    operations.sort(key=lambda op: op[1])
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    for entry in har["log"]["entries"]:
        path = re.sub(r"^https?://[^/]+", "", entry["request"]["url"]).split("?")[0]
        method = entry["request"]["method"]
        operation_id = next((op[3] for op in operations if op[0] == method and op[2].match(path)), None)
        if operation_id:
            statuses[operation_id][entry["response"]["status"]] += 1
    return statuses


@pytest.mark.timeout(400)  # about a minute alone; a loaded machine (tests in parallel) can triple it
@pytest.mark.parametrize("with_tokens", [True, False], ids=["token of the right role", "no token"])
async def test_schemathesis_finds_nothing(
    client: httpx.AsyncClient, api_url: str, factory: Factory, mysql: pymysql.Connection, tmp_path: Path,
    with_tokens: bool,
) -> None:
    """Every operation, with every check schemathesis has, in all its phases (examples, coverage, fuzzing,
    stateful): no 5xx, every status, header and body as documented, invalid data refused, valid data taken, auth
    enforced."""
    seeded = await seed(factory)
    spec = (await client.get("/schema/openapi.json")).json()
    config, har_path = tmp_path / "schemathesis.toml", tmp_path / "run.har"
    config.write_text(schemathesis_config(seeded, with_tokens))
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "--config-file", str(config), "run", f"{api_url}/schema/openapi.json",
        # One worker: with several, Hypothesis's lambda descriptions race in CPython 3.11's ast.parse.
        "--workers", "1", "--no-color", "--report", "har", "--report-har-path", str(har_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 380))[0].decode()
    assert process.returncode == 0, output

    statuses = statuses_by_operation(json.loads(har_path.read_text()), spec)
    everything = {op["operationId"] for methods in spec["paths"].values() for op in methods.values()}
    assert set(statuses) == everything  # every operation was called
    assert all(status < 500 or (op == "health" and status == 503) for op, counter in statuses.items()
               for status in counter), statuses
    # Each operation says who may call it: bearer, or no security at all (`[]`, the public ones).
    protected = {op["operationId"] for methods in spec["paths"].values() for op in methods.values()
                 if op["security"] != []}
    assert protected == set(DOCTOR_OPERATIONS + PATIENT_OPERATIONS + STAFF_OPERATIONS)
    for operation_id in protected:
        answered = statuses[operation_id]
        if with_tokens:  # the token got past authentication and the role guard
            assert set(answered) - {401, 403}, (operation_id, answered)
        else:  # only ever refused (a 404 is an id that is not even a number: no route, so no auth either)
            assert set(answered) <= {401, 404, 405}, (operation_id, answered)
    assert_tables_intact(mysql)
    assert len(rows(mysql, "SELECT id FROM users WHERE id IN (%s, %s, %s)",
                    seeded["doctor"]["id"], seeded["patient"]["id"], seeded["staff"]["id"])) == 3


# --- 2. forged, broken and orphaned tokens -------------------------------------------------------------------------

def segment(value: dict[str, Any]) -> str:
    return segment_of(json.dumps(value).encode())


def segment_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def with_header(header: bytes, user: User) -> str:
    """A token with this header, read before its (missing) signature is checked."""
    return f"{segment_of(header)}.{segment(claims(user))}.x"


def claims(user: User, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    issued = {"sub": str(user["id"]), "role": user["role"], "ver": 0, "iat": now, "exp": now + 600, "jti": "abuse"}
    return {name: value for name, value in (issued | changes).items() if value is not None}


def signed(user: User, secret: str, **changes: Any) -> str:
    return jwt.encode(claims(user, **changes), secret, algorithm="HS256")


def resigned_payload(user: User, secret: str, **changes: Any) -> str:
    """The user's real token with claims changed in the payload and the old signature kept."""
    header, _, signature = signed(user, secret).split(".")
    return f"{header}.{segment(claims(user, **changes))}.{signature}"


def other_role(user: User) -> str:
    return "Doctor" if user["role"] == "Patient" else "Patient"


TOKEN_ATTACKS = {
    "alg none": lambda user, _: f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims(user))}.",
    "tampered signature": lambda user, secret: signed(user, secret)[:-4] + "AAAA",
    "expired": lambda user, secret: signed(user, secret, iat=int(time.time()) - 3600, exp=int(time.time()) - 60),
    "role changed, old signature kept": lambda user, secret: resigned_payload(user, secret, role=other_role(user)),
    "another user's id, old signature kept": lambda user, secret: resigned_payload(user, secret, sub="1"),
    "signed with another secret": lambda user, _: signed(user, "not-the-secret-but-just-as-long-0123456789"),
    "the other role, correctly signed": lambda user, secret: signed(user, secret, role=other_role(user)),
    "sub beyond BIGINT, correctly signed": lambda user, secret: signed(user, secret, sub="9" * 40),
    "sub of 5,000 digits, correctly signed": lambda user, secret: signed(user, secret, sub="9" * 5_000),
    "a header of 5,000 nested arrays": lambda user, _: with_header(b"[" * 5_000, user),
    "a 5,000-digit number in the header": lambda user, _: with_header(b'{"alg": "HS256", "kid": ' + HUGE_INTEGER + b"}",
                                                                     user),
    "100 KB of token": lambda user, secret: signed(user, secret) + "A" * 100_000,
}


async def protected_requests(factory: Factory) -> list[tuple[User, str, str, Any]]:
    """(whose token, method, path, body): two patient and two doctor endpoints, each of which would change or
    reveal something with a valid token."""
    doctor, patient = await factory.doctor(), await factory.patient()
    window = await factory.window(doctor, at(9), at(17))
    return [
        (patient, "POST", "/appointments", {"doctor_id": doctor["id"], "start_time": iso(at(10)),
                                            "end_time": iso(at(11))}),
        (patient, "GET", "/booking-requests", None),
        (doctor, "POST", "/doctors/availability", {"start_time": iso(at(18)), "end_time": iso(at(19))}),
        (doctor, "DELETE", f"/doctors/availability/{window['id']}", None),
    ]


@pytest.mark.parametrize("attack", list(TOKEN_ATTACKS))
async def test_forged_tokens_are_401_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, settings: Settings, attack: str
) -> None:
    requests = await protected_requests(factory)
    before = snapshot(mysql)
    for user, method, path, body in requests:
        token = TOKEN_ATTACKS[attack](user, settings.jwt_secret)
        unauthenticated(await client.request(method, path, json=body, headers=bearer(token)))
    assert snapshot(mysql) == before
    _, method, path, body = requests[1]  # and the real token works
    assert (await client.request(method, path, json=body, headers=requests[1][0].headers)).status_code == 200


async def test_a_deleted_users_token_is_401_on_every_protected_endpoint(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    requests = await protected_requests(factory)
    with mysql.cursor() as cursor:  # the doctor's window goes with them (ON DELETE CASCADE)
        cursor.execute("DELETE FROM users")
    before = snapshot(mysql)
    for user, method, path, body in requests:
        unauthenticated(await client.request(method, path, json=body, headers=user.headers))
    assert snapshot(mysql) == before


# --- 3. object-level authorization: another user's ids -------------------------------------------------------------

async def test_another_users_ids_are_404_like_ids_that_do_not_exist_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    window = await factory.window(doctor, at(9), at(17))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(11))
    request_id, nowhere = appointment["booking_request_id"], 2**53 - 1
    before = snapshot(mysql)

    def same_as_nowhere(theirs: httpx.Response, missing: httpx.Response) -> None:
        """A 404 that says no more than the one for an id nobody has: no way to learn that the object exists."""
        body, none = problem(theirs, 404), problem(missing, 404)
        assert (body["type"], body["title"]) == (none["type"], none["title"])
        assert body["detail"].replace(str(theirs.request.url).rsplit("/", 1)[-1].split("?")[0], "N") == \
            none["detail"].replace(str(nowhere), "N")

    # A booking request is its patient's alone: not another patient's, not any doctor's, its own doctor's included.
    for intruder in (other_patient, other_doctor, doctor):
        started = time.monotonic()
        same_as_nowhere(await client.get(f"/booking-requests/{request_id}", params={"wait": 5},
                                         headers=intruder.headers),
                        await client.get(f"/booking-requests/{nowhere}", headers=intruder.headers))
        assert time.monotonic() - started < 2  # refused at once, not after a long poll
    # An appointment is its patient's and its doctor's.
    for intruder in (other_patient, other_doctor):
        path = f"/appointments/{appointment['id']}"
        same_as_nowhere(await client.get(path, headers=intruder.headers),
                        await client.get(f"/appointments/{nowhere}", headers=intruder.headers))
        same_as_nowhere(await client.delete(path, params={"reason": "mine now"}, headers=intruder.headers),
                        await client.delete(f"/appointments/{nowhere}", params={"reason": "x"},
                                            headers=intruder.headers))
    # A window is its doctor's; a patient may not even try.
    same_as_nowhere(await client.delete(f"/doctors/availability/{window['id']}", headers=other_doctor.headers),
                    await client.delete(f"/doctors/availability/{nowhere}", headers=other_doctor.headers))
    problem(await client.delete(f"/doctors/availability/{window['id']}", headers=patient.headers), 403)
    # Nor do the lists show them.
    for intruder, path in ((other_patient, "/booking-requests"), (other_patient, "/appointments/my-appointments"),
                           (other_doctor, "/appointments/my-appointments"),
                           (other_doctor, "/doctors/my-appointments")):
        listed = await client.get(path, headers=intruder.headers)
        assert listed.status_code == 200 and listed.json()["items"] == [], (path, listed.text)

    assert snapshot(mysql) == before
    for owner, path in ((patient, f"/booking-requests/{request_id}"), (patient, f"/appointments/{appointment['id']}"),
                        (doctor, f"/appointments/{appointment['id']}")):
        assert (await client.get(path, headers=owner.headers)).status_code == 200


# --- 4. oversized and odd bodies ----------------------------------------------------------------------------------

def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD_BODIES: dict[str, tuple[bytes, dict[str, str], int, str | None]] = {
    # name: (body, headers, status, field named in errors[])
    "10,000 levels of [": (nested(10_000), JSON, 400, "body"),
    "10,000 unclosed [": (b"[" * 10_000, JSON, 400, "body"),
    "10,000 levels of objects in an unknown field": (
        b'{"doctor_id": 1, "surprise": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}", JSON, 400, "surprise"),
    "NaN": (b'{"doctor_id": NaN, "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T11:00:00Z"}', JSON,
            400, "body"),
    "Infinity": (b'{"doctor_id": Infinity}', JSON, 400, "body"),
    "doctor_id beyond int64": (b'{"doctor_id": 18446744073709551616, "start_time": "2030-01-01T10:00:00Z", '
                               b'"end_time": "2030-01-01T11:00:00Z"}', JSON, 400, "doctor_id"),
    "doctor_id 1e400": (b'{"doctor_id": 1e400, "start_time": "2030-01-01T10:00:00Z", '
                        b'"end_time": "2030-01-01T11:00:00Z"}', JSON, 400, "doctor_id"),
    "empty body": (b"", JSON, 400, "body"),
    "whitespace only": (b" \n ", JSON, 400, "body"),
    "null": (b"null", JSON, 400, "body"),
    "an array where an object is expected": (b"[1, 2, 3]", JSON, 400, "body"),
    "a string where an object is expected": (b'"{}"', JSON, 400, "body"),
    "truncated JSON": (b'{"doctor_id": 1, "start_time": "2030-', JSON, 400, "body"),
    "trailing garbage": (b'{"doctor_id": 1} {"doctor_id": 2}', JSON, 400, None),
    "invalid UTF-8": (b'{"notes": "\xff\xfe"}', JSON, 400, "body"),
    "a byte order mark": ("\ufeff{}".encode(), JSON, 400, "body"),
    "an unescaped newline in a string": (b'{"notes": "a\nb"}', JSON, 400, "body"),
    "a lone surrogate escape": (b'{"notes": "\\ud800"}', JSON, 400, "body"),
    "text/plain": (b"{}", {"content-type": "text/plain"}, 415, None),
    "a form": (b"doctor_id=1", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    "multipart": (b"--x\r\n\r\n--x--", {"content-type": "multipart/form-data; boundary=x"}, 415, None),
    "no Content-Type": (b"{}", {}, 415, None),
}


@pytest.fixture
async def booking(factory: Factory) -> dict[str, Any]:
    """A patient and a valid body for POST /appointments, to break in every way."""
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    return {"patient": patient, "body": {"doctor_id": doctor["id"], "start_time": iso(at(10)),
                                         "end_time": iso(at(11))}}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_odd_bodies_are_a_clear_4xx_and_store_nothing(
    client: httpx.AsyncClient, mysql: pymysql.Connection, booking: dict[str, Any], name: str
) -> None:
    content, headers, status, field = BAD_BODIES[name]
    before = snapshot(mysql)
    response = await client.post("/appointments", content=content, headers={**headers, **booking["patient"].headers})
    problem(response, status, field)
    assert snapshot(mysql) == before
    assert (await client.get("/health")).status_code == 200


def bodies_of_every_route(settings: Settings) -> dict[str, Any]:
    """Each route of the app that reads a body, as "METHOD path", and the type it decodes the body into."""
    app = create_app(settings)
    return {f"{method} {path}": handler.parsed_data_field.annotation
            for path, methods in app.route_handler_method_map.items() for method, handler in methods.items()
            if isinstance(handler, HTTPRouteHandler) and handler.parsed_data_field is not None}


def types_within(annotation: Any) -> list[msgspec.inspect.Type]:
    """Every type `annotation` is made of, itself included, however deeply nested."""
    found: list[msgspec.inspect.Type] = []
    pending = [msgspec.inspect.type_info(annotation)]
    while pending:
        info = pending.pop()
        if any(info is seen for seen in found):
            continue
        found.append(info)
        if isinstance(info, msgspec.inspect.StructType):
            pending += [field.type for field in info.fields]
        elif isinstance(info, msgspec.inspect.UnionType):
            pending += info.types
        elif isinstance(info, msgspec.inspect.Metadata):
            pending.append(info.type)
        elif isinstance(info, msgspec.inspect.DictType):
            pending += [info.key_type, info.value_type]
        elif hasattr(info, "item_type"):  # list, set, frozenset, tuple[T, ...]
            pending.append(info.item_type)
        elif hasattr(info, "item_types"):  # tuple[A, B]
            pending += info.item_types
    return found


def test_every_request_body_refuses_unknown_fields(settings: Settings) -> None:
    """Every struct any route decodes a body into forbids unknown fields, and no body is a free-form mapping: a key
    the API does not know is a 400 naming it, never silently skipped (nor read by a second parser)."""
    bodies = bodies_of_every_route(settings)
    assert {"POST /auth/login", "POST /auth/reset-password", "POST /appointments", "PATCH /doctors/me"} <= set(bodies)
    for route, annotation in bodies.items():
        parts = types_within(annotation)
        structs = [info.cls for info in parts if isinstance(info, msgspec.inspect.StructType)]
        assert structs, route
        assert all(cls.__struct_config__.forbid_unknown_fields for cls in structs), (route, structs)
        assert not [info for info in parts if isinstance(info, msgspec.inspect.DictType | msgspec.inspect.AnyType)], \
            route


@pytest.mark.parametrize(("path", "fields"), [
    ("/auth/login", {"email": "a@clinic.example", "password": "whatever1"}),
    ("/auth/forgot-password", {"email": "a@clinic.example"}),
    ("/auth/reset-password", {"token": "t", "new_password": "whatever1"}),
    ("/auth/register", {"email": "a@clinic.example", "name": "A", "role": "Patient", "password": "whatever1"}),
])
async def test_a_huge_number_in_an_unknown_field_is_a_400_naming_it(
    client: httpx.AsyncClient, mysql: pymysql.Connection, path: str, fields: dict[str, str]
) -> None:
    before = snapshot(mysql)
    for number in (HUGE_INTEGER, b"-" + HUGE_INTEGER, b"1." + HUGE_INTEGER, b"1e400", HUGE_INTEGER + b"e-4999"):
        body = json.dumps(fields).encode()[:-1] + b', "surprise": ' + number + b"}"
        problem(await client.post(path, content=body, headers=JSON), 400, "surprise")
    assert snapshot(mysql) == before


class Lenient(msgspec.Struct):
    """A body type that skips unknown fields, as none of the API's may: the decoder must still never fail."""

    id: int


@pytest.mark.parametrize("ignored", [
    HUGE_INTEGER, b"-" + HUGE_INTEGER, b"[" + HUGE_INTEGER + b"]", b"1." + HUGE_INTEGER, b"1e400", b"-1e400",
    b"1" + b"0" * 5_000 + b".5e-5000",
])
def test_numbers_msgspec_reads_never_break_the_duplicate_key_check(ignored: bytes) -> None:
    body = b'{"id": 1, "ignored": ' + ignored + b', "ignored_too": {"a": ' + ignored + b"}}"
    assert decode_body(msgspec.json.Decoder(Lenient), body) == Lenient(id=1)


def test_deep_json_in_a_field_that_is_skipped_is_a_400() -> None:
    """A decoder that skips a field walks through it; past either parser's depth limit that is a 400."""
    for deep in (nested(10_000), b'{"a":' * 10_000 + b"1" + b"}" * 10_000, nested(2_000)):
        with pytest.raises(InvalidInput) as refused:
            decode_body(msgspec.json.Decoder(Lenient), b'{"id": 1, "extra": ' + deep + b"}")
        assert refused.value.extra["errors"][0]["field"] == "body"


async def test_duplicate_keys_are_refused_wherever_they_are(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, booking: dict[str, Any]
) -> None:
    """Parsers disagree on which of two equal keys counts (msgspec: the last; many proxies: the first)."""
    doctor = await factory.doctor()
    before = snapshot(mysql)
    body = booking["body"]
    twice = (f'{{"doctor_id": {body["doctor_id"]}, "doctor_id": {doctor["id"]}, "start_time": "{body["start_time"]}",'
             f' "end_time": "{body["end_time"]}"}}')
    problem(await client.post("/appointments", content=twice, headers={**JSON, **booking["patient"].headers}), 400,
            "doctor_id")
    windows = f'[{{"start_time": "{iso(at(9))}", "end_time": "{iso(at(10))}", "end_time": "{iso(at(11))}"}}]'
    problem(await client.post("/doctors/availability", content=windows, headers={**JSON, **doctor.headers}), 400,
            "end_time")
    assert snapshot(mysql) == before


async def test_bodies_over_the_size_limit_are_413_however_they_are_sent(
    client: httpx.AsyncClient, mysql: pymysql.Connection, settings: Settings, booking: dict[str, Any]
) -> None:
    before = snapshot(mysql)
    headers = {**JSON, **booking["patient"].headers}
    just_over = json.dumps({**booking["body"], "notes": "x" * settings.max_body_bytes}).encode()
    one_megabyte = json.dumps({**booking["body"], "notes": "😀" * 250_000}).encode()

    async def chunked() -> Any:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(one_megabyte), 16_384):
            yield one_megabyte[start:start + 16_384]

    for content in (just_over, one_megabyte, chunked()):
        response = await client.post("/appointments", content=content, headers=headers)
        assert problem(response, 413)["title"] == "Request body too large"
    # Under the limit but over a field's: a 400 naming it.
    problem(await client.post("/appointments", json={**booking["body"], "notes": "x" * 60_000}, headers=headers),
            400, "notes")
    assert snapshot(mysql) == before
    # A body just under the limit is read (and refused for its content, not its size).
    padding = settings.max_body_bytes - len(json.dumps({**booking["body"], "notes": ""}).encode()) - 64
    almost = json.dumps({**booking["body"], "notes": "x" * padding}).encode()
    assert len(almost) < settings.max_body_bytes
    problem(await client.post("/appointments", content=almost, headers=headers), 400, "notes")


async def test_json_with_a_charset_or_a_json_suffix_is_taken(
    client: httpx.AsyncClient, booking: dict[str, Any]
) -> None:
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.clinic+json"):
        response = await client.post("/appointments", content=json.dumps(booking["body"]),
                                     headers={"content-type": content_type, **booking["patient"].headers})
        # Stored (202), or, once the first is decided, refused at once for the same time: the body was read either way.
        assert response.status_code == 202 or response.json().get("reason") == "slot_taken", (content_type,
                                                                                              response.text)


# --- 4b. numbers and names in paths and query strings ---------------------------------------------------------------

def spellings_of(number: int) -> list[str]:
    """Ways to write `number` that Python's int() reads as it, but that are not how anyone writes an id."""
    digits = str(number)
    return ["_".join(digits) if len(digits) > 1 else f"0_{digits}", f"+{digits}", f"0{digits}", f"%20{digits}",
            f"{digits}%20", "".join(chr(ord("０") + int(d)) for d in digits),  # full width
            "".join(chr(ord("٠") + int(d)) for d in digits)]  # Arabic-Indic


async def test_an_id_in_a_path_is_plain_decimal_digits(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    """Anything else matches no route, a 404 as for `/doctors/abc`: not the doctor whose id int() makes of it."""
    doctor, patient = await factory.doctor(), await factory.patient()
    window = await factory.window(doctor, at(9), at(17))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(11))
    before = snapshot(mysql)
    for path, number, user in (("/doctors/{}", doctor["id"], None), ("/doctors/{}/slots", doctor["id"], None),
                               ("/appointments/{}", appointment["id"], patient),
                               ("/booking-requests/{}", appointment["booking_request_id"], patient)):
        headers = user.headers if user else {}
        assert (await client.get(path.format(number), headers=headers)).status_code == 200
        for spelling in [*spellings_of(number), "9" * 5_000]:
            problem(await client.get(path.format(spelling), headers=headers), 404)
    for spelling in spellings_of(window["id"]):
        problem(await client.delete(f"/doctors/availability/{spelling}", headers=doctor.headers), 404)
    problem(await client.delete(f"/appointments/0{appointment['id']}", headers=patient.headers), 404)
    assert snapshot(mysql) == before


async def test_an_integer_in_a_query_is_plain_decimal_digits(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """`1e1`, `10.0` or `-0` are not how a page size is written; Litestar's reading took them as 10, 10 and 0."""
    doctor, patient = await factory.doctor(), await factory.patient()
    request_id = (await factory.book(patient, doctor["id"], at(10), at(11))).json()["request_id"]
    for path, name, user in (("/doctors", "limit", None), ("/doctors", "offset", None),
                             (f"/doctors/{doctor['id']}/slots", "duration", None),
                             ("/booking-requests", "limit", patient),
                             ("/appointments/my-appointments", "offset", patient),
                             (f"/booking-requests/{request_id}", "wait", patient)):
        headers = user.headers if user else {}
        for value in ("1e1", "10.0", "1E1", "100e-1", "-0", "0.0", "", " 10", "１０"):
            problem(await client.get(path, params={name: value}, headers=headers), 400, name)
        assert (await client.get(path, params={name: "10" if name != "duration" else "30"},
                                 headers=headers)).status_code == 200


async def test_a_query_parameter_an_endpoint_does_not_take_is_a_400_naming_it(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """As an unknown field in a body: `?wait=` on the list of booking requests does not long-poll, and a misspelt
    `ofset` would silently give the first page."""
    doctor, patient = await factory.doctor(), await factory.patient()
    for path, name, user in (("/booking-requests", "wait", patient), ("/doctors", "ofset", None),
                             (f"/doctors/{doctor['id']}/slots", "duraton", None),
                             (f"/doctors/{doctor['id']}", "limit", None), ("/auth/me", "x", patient),
                             ("/appointments/my-appointments", "doctor_id", patient)):
        problem(await client.get(path, params={name: "5"}, headers=user.headers if user else {}), 400, name)


async def test_a_query_value_the_document_does_not_offer_is_a_400(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """A choice is one of its values, and a time is a time: Litestar read `?status=null` as no filter, and an empty
    `available_after` was taken as none given, where the document offers neither."""
    doctor, patient = await factory.doctor(), await factory.patient()
    for path, name, user in (("/appointments/my-appointments", "status", patient),
                             ("/doctors/my-appointments", "status", doctor),
                             ("/booking-requests", "status", patient), ("/doctors", "sort", None)):
        headers = user.headers if user else {}
        for value in ("null", "None", "", "Confirmed"):
            problem(await client.get(path, params={name: value}, headers=headers), 400, name)
    assert (await client.get("/booking-requests", params={"status": "pending"}, headers=patient.headers)
            ).status_code == 200
    for value in ("", "null", "tomorrow"):
        problem(await client.get("/doctors", params={"available_after": value}), 400, "available_after")


# --- 5. SQL metacharacters and Unicode in every string field -------------------------------------------------------

NASTY = {
    "sql quote": "'; DROP TABLE users; --",
    "sql or": '" OR 1=1 --',
    "like wildcards": "%_\\",
    "backslashes and quotes": "\\'\\\"\\\\",
    "emoji": "😀🩺🧑🏽‍⚕️",
    "right to left": "د. مرحبا עברית",
    "right-to-left override": "\u202egnp.exe",
    "nul": "a\u0000b",
    "combining marks": "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "zero width": "a\u200bb\u200dc\ufeffd",
    "html": "<script>alert(1)</script>",
    "astral": "𝓤𝓷𝓲𝓬𝓸𝓭𝓮 𝄞",
}


@pytest.mark.parametrize("name", list(NASTY))
async def test_nasty_strings_are_stored_and_returned_exactly(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, name: str
) -> None:
    text = NASTY[name]
    decoy = await factory.doctor(name="Dr Plain", specialty="Plain")
    # Registration: name, specialty, and the password (then logging in with it).
    password = f"{text}-pass-1"[:40]
    response = await client.post("/auth/register", json={
        "email": f"o'brien+%_{abs(hash(name))}@clinic.example", "name": f"Dr {text}", "role": "Doctor",
        "password": password, "specialty": text})
    assert response.status_code == 201, response.text
    doctor = User(response.json())
    assert (doctor["name"], doctor["specialty"]) == (f"Dr {text}", text)
    assert rows(mysql, "SELECT name, specialty FROM users WHERE id = %s", doctor["id"]) == [
        {"name": f"Dr {text}", "specialty": text}]
    login = await client.post("/auth/login", json={"email": doctor["email"], "password": password})
    assert login.status_code == 200, login.text
    doctor["token"] = login.json()["access_token"]
    # Search: a substring of the name (LIKE wildcards taken literally) and the exact specialty.
    for params in ({"q": text}, {"specialty": text}):
        found = await client.get("/doctors", params=params)
        assert found.status_code == 200, found.text
        assert [d["id"] for d in found.json()["items"]] == [doctor["id"]], (params, found.json())
    assert decoy["id"] not in [d["id"] for d in (await client.get("/doctors", params={"q": text})).json()["items"]]
    # The doctor's own profile.
    patched = await client.patch("/doctors/me", json={"specialty": f"{text}!"}, headers=doctor.headers)
    assert patched.status_code == 200 and patched.json()["specialty"] == f"{text}!", patched.text
    # A booking's notes, and the doctor's reason for cancelling it.
    patient = await factory.patient(name=f"Pat {text}")
    await factory.window(doctor, at(9), at(17))
    booked = await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": iso(at(10)), "end_time": iso(at(11)), "notes": text})
    assert booked.status_code == 201, booked.text
    appointment = booked.json()
    assert (appointment["notes"], appointment["patient_name"], appointment["doctor_name"]) == (
        text, f"Pat {text}", f"Dr {text}")
    request = await client.get(f"/booking-requests/{appointment['booking_request_id']}", headers=patient.headers)
    assert request.json()["notes"] == text
    cancelled = await client.delete(f"/appointments/{appointment['id']}", params={"reason": text},
                                    headers=doctor.headers)
    assert cancelled.status_code == 200 and cancelled.json()["cancel_reason"] == text, cancelled.text
    assert rows(mysql, "SELECT a.notes, a.cancel_reason, b.notes AS request_notes FROM appointments a "
                       "JOIN booking_requests b ON b.id = a.booking_request_id WHERE a.id = %s", appointment["id"]) == [
        {"notes": text, "cancel_reason": text, "request_notes": text}]
    assert_tables_intact(mysql)
    assert len(rows(mysql, "SELECT id FROM users")) == 3


async def test_nasty_ascii_in_emails_and_headers(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, booking: dict[str, Any]
) -> None:
    for email in ("x'OR'1'='1@clinic.example", 'a"--@clinic.example', "%_\\@clinic.example"):
        registered = await client.post("/auth/register", json={"email": email, "name": "E", "role": "Patient",
                                                               "password": PASSWORD})
        assert registered.status_code == 201 and registered.json()["email"] == email.lower(), registered.text
        assert (await client.post("/auth/login", json={"email": email, "password": PASSWORD})).status_code == 200
        assert (await client.post("/auth/forgot-password", json={"email": email})).status_code == 202
    # Not an address at all: refused by the pattern, never queried.
    problem(await client.post("/auth/login", json={"email": "'; DROP TABLE users; --", "password": "x"}), 400,
            "email")
    # An idempotency key is a header: latin-1 only, so ASCII metacharacters.
    headers = {**booking["patient"].headers, "Idempotency-Key": "'; DROP TABLE booking_requests; -- %_\\"}
    first = await client.post("/appointments", json=booking["body"], headers=headers)
    again = await client.post("/appointments", json=booking["body"], headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    # The replay names the same request (by then it may be decided already: a replay says where it stands).
    assert again.json()["request_id"] == first.json()["request_id"]
    assert_tables_intact(mysql)
    assert len(rows(mysql, "SELECT id FROM booking_requests")) == 1


async def test_a_specialty_of_emoji_finds_only_itself(client: httpx.AsyncClient, factory: Factory) -> None:
    """utf8mb4_unicode_ci gives every character beyond the BMP one weight: `?specialty=🦷` found the `🩺` doctors.
    The filter stays blind to case and accents, as a directory search should be."""
    stethoscope, tooth = await factory.doctor(specialty="🩺"), await factory.doctor(specialty="🦷 Dentistry")
    script = await factory.doctor(specialty="𝓒𝓪𝓻𝓭𝓲𝓸𝓵𝓸𝓰𝔂")
    accented = await factory.doctor(specialty="Pédiatrie")
    for specialty, doctor in (("🩺", stethoscope), ("🦷 Dentistry", tooth), ("𝓒𝓪𝓻𝓭𝓲𝓸𝓵𝓸𝓰𝔂", script),
                              ("PEDIATRIE", accented)):
        found = (await client.get("/doctors", params={"specialty": specialty})).json()["items"]
        assert [d["id"] for d in found] == [doctor["id"]], (specialty, found)
    for nobody in ("🦷", "😀", "🩺 Dentistry", "𝓓𝓮𝓷𝓽𝓲𝓼𝓽𝓻𝔂𝔂𝔂"):
        assert (await client.get("/doctors", params={"specialty": nobody})).json()["items"] == [], nobody


async def test_an_email_that_lower_casing_makes_too_long_is_a_400(
    client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    """`İ` lower-cases to two characters: 245 of them are 255 characters as sent and 500 as stored (VARCHAR(255))."""
    email = "İ" * 245 + "@x.example"
    before = snapshot(mysql)
    problem(await client.post("/auth/register", json={"email": email, "name": "I", "role": "Patient",
                                                      "password": PASSWORD}), 400, "email")
    problem(await client.post("/auth/login", json={"email": email, "password": PASSWORD}), 401)
    assert (await client.post("/auth/forgot-password", json={"email": email})).status_code == 202
    assert snapshot(mysql) == before
    fits = "İ" * 122 + "@x.example"  # 254 characters once lower-cased
    registered = await client.post("/auth/register", json={"email": fits, "name": "I", "role": "Patient",
                                                           "password": PASSWORD})
    assert registered.status_code == 201 and registered.json()["email"] == fits.lower(), registered.text
    assert (await client.post("/auth/login", json={"email": fits, "password": PASSWORD})).status_code == 200


async def test_an_email_is_its_account_exactly_not_its_look_alikes(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    """The per-account login limit counts the address as sent (lower-cased); the lookup must find exactly that
    address, or every accented or invisibly padded spelling of it would get a limit of its own. (users.email was
    utf8mb4_unicode_ci: blind to accents and to characters such as a zero-width space.)"""
    patient = await factory.patient(email="pat@clinic.example")
    look_alikes = ["pát@clinic.example", "pa\u200bt@clinic.example", "pat@clinic.exämple", "p\u00adat@clinic.example"]
    for email in look_alikes:
        problem(await client.post("/auth/login", json={"email": email, "password": PASSWORD}), 401)
    for email in look_alikes:  # and each is an address of its own, free to register
        registered = await client.post("/auth/register", json={"email": email, "name": "P", "role": "Patient",
                                                               "password": PASSWORD})
        assert registered.status_code == 201, (email, registered.text)
    assert rows(mysql, "SELECT email FROM users ORDER BY id") == [{"email": email}
                                                                  for email in [patient["email"], *look_alikes]]
    assert (await client.post("/auth/login", json={"email": " PAT@clinic.example", "password": PASSWORD})).json()[
        "access_token"]


async def send_raw(api_url: str, method: str, path: str, headers: dict[str, bytes],
                   body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """One request written byte for byte, for header values httpx will not send (a trailing space, bytes outside
    ASCII); its status and JSON body."""
    host, port = api_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode(), b"Connection: close",
            b"Content-Length: " + str(len(body)).encode()] + [name.encode() + b": " + value
                                                             for name, value in headers.items()]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")


async def test_idempotency_keys_are_compared_byte_for_byte(
    api_url: str, mysql: pymysql.Connection, db: Database, booking: dict[str, Any]
) -> None:
    """Keys that differ only in case, or only by a trailing space, are different keys: each makes its own request,
    and only the very same key replays one. (Over HTTP the trailing space may not arrive: uvicorn 0.55 strips a
    header value's trailing whitespace, as RFC 9110 allows; so the storage is checked for it directly.)"""
    keys = [b"Order-ABC", b"order-abc"]
    bodies = [json.dumps({**booking["body"], "start_time": iso(at(hour)), "end_time": iso(at(hour + 0.5))}).encode()
              for hour in (10, 11)]

    async def book(key: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
        return await send_raw(api_url, "POST", "/appointments", {
            "Content-Type": b"application/json", "Authorization": booking["patient"].headers["Authorization"].encode(),
            "Idempotency-Key": key}, body)

    made = [await book(key, body) for key, body in zip(keys, bodies, strict=True)]
    assert [status for status, _ in made] == [202, 202], made
    ids = [answer["request_id"] for _, answer in made]
    assert len(set(ids)) == 2
    assert rows(mysql, "SELECT id, idempotency_key FROM booking_requests ORDER BY id") == [
        {"id": request_id, "idempotency_key": key} for request_id, key in zip(ids, keys, strict=True)]
    for request_id, key, body in zip(ids, keys, bodies, strict=True):
        status, answer = await book(key, body)  # the same key and body: the same request
        assert status == 202 and answer["request_id"] == request_id, (key, answer)
    status, answer = await book(keys[1], bodies[0])  # the same key with another body
    assert status == 409, answer
    assert len(rows(mysql, "SELECT id FROM booking_requests")) == 2

    # A trailing space is a byte like any other where keys are kept: no padding in the unique key or the lookup.
    padded = {"kind": "book", "reschedules": None, "hold_id": None, "patient_id": booking["patient"]["id"],
              "requested_by": None, "doctor_id": booking["body"]["doctor_id"], "appointment_type_id": None,
              "start_time": at(12), "end_time": at(12.5), "notes": None, "idempotency_key": "Order-ABC ",
              "fingerprint": "x", "created_at": at(0)}
    inserted, padded_id = await db.execute("insert_booking_request", padded)
    assert inserted == 1
    found = await db.fetch_one("find_booking_request_by_idempotency_key",
                               {"patient_id": booking["patient"]["id"], "idempotency_key": "Order-ABC "})
    assert found is not None and found["id"] == padded_id


@pytest.mark.parametrize("key", [
    b"tab\there", b"caf\xc3\xa9", b"caf\xe9", b"\xff\xfe", b"x" * 256])
async def test_an_idempotency_key_is_printable_ascii_of_at_most_255_characters(
    api_url: str, mysql: pymysql.Connection, booking: dict[str, Any], key: bytes
) -> None:
    """What a header carries beyond ASCII is bytes whose meaning depends on the sender's encoding (`caf\xe9` and
    `caf\xc3\xa9` are both café), so a key is printable ASCII (as the IETF draft's Idempotency-Key), else a 400."""
    before = snapshot(mysql)
    status, answer = await send_raw(api_url, "POST", "/appointments", {
        "Content-Type": b"application/json", "Authorization": booking["patient"].headers["Authorization"].encode(),
        "Idempotency-Key": key}, json.dumps(booking["body"]).encode())
    assert status == 400, answer
    assert "idempotency_key" in [error["field"] for error in answer["errors"]], answer
    assert snapshot(mysql) == before


async def test_unicode_that_is_not_text_is_a_clear_400(
    client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    before = snapshot(mysql)
    for escaped in (b"\\ud800", b"\\udfff", b"a\\ud800b", b"\\udc00\\ud800"):  # lone or reversed surrogates
        body = b'{"email": "s@clinic.example", "name": "' + escaped + b'", "role": "Patient", "password": "p4ssw0rd!"}'
        problem(await client.post("/auth/register", content=body, headers=JSON), 400, "body")
    assert snapshot(mysql) == before
    # In a query string, bytes that are not UTF-8 (a surrogate's UTF-8 form, a lone 0xFF) find nothing.
    for raw in ("%ED%A0%80", "%FF", "%00", "%C0%AF"):
        response = await client.get(f"/doctors?q={raw}")
        assert response.status_code == 200 and response.json()["items"] == [], response.text


# --- 6. times at the edges ----------------------------------------------------------------------------------------

async def test_the_end_of_year_9999(client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    created = await client.post("/doctors/availability", headers=doctor.headers,
                                json={"start_time": "9999-12-31T20:00:00Z", "end_time": "9999-12-31T23:55:00Z"})
    assert created.status_code == 201, created.text
    slots_path = f"/doctors/{doctor['id']}/slots"
    # No `to`: two weeks after `from` would be past the end of time, so the range ends there.
    slots = await client.get(slots_path, params={"from": "9999-12-31T00:00:00Z"})
    assert slots.status_code == 200, slots.text
    assert [s["start_time"][11:16] for s in slots.json()["slots"]] == [
        "20:00", "20:30", "21:00", "21:30", "22:00", "22:30", "23:00"]  # 23:30 would end after 23:55
    long_slots = await client.get(slots_path, params={"from": "9999-12-31T00:00:00Z", "duration": 480})
    assert long_slots.status_code == 200 and long_slots.json()["slots"] == [], long_slots.text
    windows = await client.get(f"/doctors/{doctor['id']}/availability", params={"from": "9999-12-31T00:00:00Z"})
    assert windows.status_code == 200 and windows.json()[0]["free"] == [
        {"start_time": "9999-12-31T20:00:00Z", "end_time": "9999-12-31T23:55:00Z"}], windows.text
    booked = await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": "9999-12-31T23:00:00Z", "end_time": "9999-12-31T23:30:00Z"})
    assert booked.status_code == 201, booked.text
    slots = await client.get(slots_path, params={"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"})
    assert slots.status_code == 200 and len(slots.json()["slots"]) == 6, slots.text
    everything = await client.get("/appointments/my-appointments", headers=patient.headers,
                                  params={"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"})
    assert everything.status_code == 200 and everything.json()["total"] == 1, everything.text
    # A `from` at the very last microsecond leaves no range at all: a 400, not an overflow.
    problem(await client.get(slots_path, params={"from": "9999-12-31T23:59:59.999999Z"}), 400, "to")
    assert len(rows(mysql, "SELECT id FROM appointments WHERE status = 'confirmed'")) == 1


@pytest.mark.parametrize(("method", "path", "where", "field"), [
    ("POST", "/doctors/availability", "body", "start_time"),
    ("POST", "/appointments", "body", "start_time"),
    ("GET", "/doctors/{doctor_id}/slots", "query", "from"),
    ("GET", "/doctors/{doctor_id}/availability", "query", "to"),
    ("GET", "/appointments/my-appointments", "query", "from"),
    ("GET", "/doctors/my-appointments", "query", "to"),
])
@pytest.mark.parametrize("moment", [
    "9999-12-31T23:00:00-05:45",  # 10000-01-01T04:45Z
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00+05:45",  # 0000-12-31T18:15Z
    "0001-01-01T05:44:59+05:45",
])
async def test_offsets_that_overflow_utc_are_a_400_naming_the_field(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, method: str, path: str, where: str,
    field: str, moment: str,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    user = doctor if path.startswith("/doctors/availability") or path == "/doctors/my-appointments" else patient
    path = path.format(doctor_id=doctor["id"])
    before = snapshot(mysql)
    if where == "body":
        other = "end_time" if field == "start_time" else "start_time"
        body = {field: moment, other: "9999-12-31T23:30:00Z"} | (
            {"doctor_id": doctor["id"]} if path == "/appointments" else {})
        response = await client.request(method, path, json=body, headers=user.headers)
    else:
        response = await client.request(method, path, params={field: moment}, headers=user.headers)
    problem(response, 400, field)
    assert snapshot(mysql) == before


def next_leap_year(after: int) -> int:
    year = after + 1
    while not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        year += 1
    return year


async def test_offsets_leap_days_missing_offsets_and_fractions_are_read_right(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    date = day(3).date().isoformat()
    leap = next_leap_year(datetime.now(UTC).year)

    async def window(start: str, end: str) -> httpx.Response:
        return await client.post("/doctors/availability", headers=doctor.headers,
                                 json={"start_time": start, "end_time": end})

    accepted = {  # sent -> (stored start, returned start)
        (f"{date}T15:45:00+05:45", f"{date}T16:45:00+05:45"): f"{date}T10:00:00",  # Nepal: no DST, 45 minutes
        (f"{date}T02:30:00-09:30", f"{date}T03:30:00-09:30"): f"{date}T12:00:00",  # Marquesas: minus half hours
        (f"{date}T14:00:00", f"{date}T14:30:00"): f"{date}T14:00:00",  # no offset: UTC
        (f"{date}T15:00:00.000Z", f"{date}T15:30:00.000000000Z"): f"{date}T15:00:00",  # zero fractions
        (f"{date}t17:00:00z", f"{date}t17:30:00z"): f"{date}T17:00:00",  # RFC 3339 allows lower case
        (f"{leap}-02-29T09:00:00Z", f"{leap}-02-29T10:00:00Z"): f"{leap}-02-29T09:00:00",
    }
    for (start, end), stored in accepted.items():
        response = await window(start, end)
        assert response.status_code == 201, (start, response.text)
        assert response.json()["start_time"] == stored + "Z", (start, response.json())
        assert rows(mysql, "SELECT start_time FROM availabilities WHERE id = %s", response.json()["id"]) == [
            {"start_time": datetime.fromisoformat(stored)}]
    before = snapshot(mysql)
    for start in (f"{leap - 1}-02-29T09:00:00Z", f"{date}T23:59:60Z", f"{date}T24:00:00Z", f"{date}T10:00:00+24:00",
                  f"{date}T10:00:00+05:45:30", f"{date}T10:00", f"{date}", "1900000000", "", "now",
                  # off the 5-minute grid: a fraction, a second, a minute, an offset that is not a multiple of 5
                  f"{date}T15:00:00.123456Z", f"{date}T16:00:00.123456789Z", f"{date}T15:00:01Z",
                  f"{date}T15:01:00Z", f"{date}T15:00:00+05:17"):
        problem(await window(start, f"{leap}-02-29T10:00:00Z"), 400, "start_time")
    problem(await client.post("/doctors/availability", headers=doctor.headers,
                              json={"start_time": 1_900_000_000, "end_time": 1_900_003_600}), 400, "start_time")
    assert snapshot(mysql) == before

    # Query times: the same offsets pick the same window; epoch numbers and dates alone are refused.
    picked = await client.get(f"/doctors/{doctor['id']}/availability",
                              params={"from": f"{date}T15:45:00+05:45", "to": f"{date}T16:45:00+05:45"})
    assert [w["start_time"] for w in picked.json()] == [f"{date}T10:00:00Z"], picked.text
    for bad in ("0.5", "1900000000", "", f"{date}", "tomorrow", f"{leap - 1}-02-29T00:00:00Z", "9" * 5_000,
                "10000-01-01T00:00:00Z", f"+{date}T10:00:00Z", f"{date}T10:00:00+99:00"):
        problem(await client.get(f"/doctors/{doctor['id']}/slots", params={"from": bad}), 400, "from")
    # And a booking in +05:45 lands on the UTC slot it names.
    booked = await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": f"{date}T15:45:00+05:45", "end_time": f"{date}T16:15:00+05:45"})
    assert booked.status_code == 201, booked.text
    assert (booked.json()["start_time"], booked.json()["end_time"]) == (f"{date}T10:00:00Z", f"{date}T10:30:00Z")


# --- 8. security headers on every response; CORS only where configured ----------------------------------------------

def csp(response: httpx.Response) -> dict[str, list[str]]:
    """The response's Content-Security-Policy as {directive: sources}."""
    directives = (part.split() for part in response.headers["content-security-policy"].split(";") if part.strip())
    return {name: sources for name, *sources in directives}


def security_headers(response: httpx.Response) -> dict[str, list[str]]:
    """Assert the headers every response carries, whatever it is; return its Content-Security-Policy."""
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", response.request.url
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "server" not in headers  # uvicorn names itself unless told not to
    policy = csp(response)
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"], policy
    return policy


def strict(response: httpx.Response) -> None:
    """The API's policy: the response may load, run and frame nothing."""
    assert set(security_headers(response)) == {"default-src", "frame-ancestors", "base-uri", "form-action"}


async def test_every_kind_of_response_has_the_security_headers_and_names_no_server(
    client: httpx.AsyncClient, factory: Factory, booking: dict[str, Any], settings: Settings
) -> None:
    patient = booking["patient"]
    doctor = await factory.doctor()
    answers = {
        200: await client.get("/doctors"),
        202: await client.post("/appointments", json=booking["body"], headers=patient.headers),
        204: await client.options("/appointments/1"),
        400: await client.get("/doctors", params={"limit": "lots"}),
        401: await client.get("/auth/me"),
        403: await client.patch("/doctors/me", json={"specialty": "Optics"}, headers=patient.headers),
        404: await client.get("/appointments/999999999", headers=doctor.headers),
        405: await client.put("/health"),
        413: await client.post("/appointments", content=b"[" + b" " * settings.max_body_bytes + b"]",
                               headers={**JSON, **patient.headers}),
        415: await client.post("/appointments", content=b"{}", headers=patient.headers),
    }
    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        strict(response)
    for path in ("/health", "/no-such-route", "/schema/openapi.json", "/schema/no-such-page"):
        strict(await client.get(path))


async def test_an_unexpected_error_is_a_bare_500_with_the_security_headers(settings: Settings) -> None:
    """Nothing of the error reaches the client: not the exception's text, not a framework exception's detail."""

    @get("/raises", **PUBLIC, sync_to_thread=False)
    def raises() -> None:
        raise RuntimeError("stack detail: /srv/app/service/core/booking.py line 42")

    @get("/misconfigured", **PUBLIC, sync_to_thread=False)
    def misconfigured() -> None:  # Litestar's own 500s are HTTPExceptions with a detail meant for developers
        raise ImproperlyConfiguredException("stack detail: dependency 'tx' is not provided")

    app = create_app(settings)
    app.register(raises)
    app.register(misconfigured)
    # In this process, without the lifespan: neither route needs MySQL or Redis.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        for path in ("/raises", "/misconfigured"):
            response = await http.get(path)
            body = problem(response, 500)
            assert body["detail"] == "Something went wrong on our side"
            assert "stack detail" not in response.text
            strict(response)


class PageAssets(HTMLParser):
    """What an HTML page loads and runs: external scripts, stylesheets and icons, inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.icons: list[str] = []
        self.inline_script_nonces: list[str | None] = []
        self.inline_styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.scripts.append(attributes["src"] or "")
        elif tag == "script":
            self.inline_script_nonces.append(attributes.get("nonce"))
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(attributes["href"] or "")
        elif tag == "link" and attributes.get("rel") == "icon":
            self.icons.append(attributes["href"] or "")
        elif tag == "style":
            self.inline_styles += 1


# What each viewer fetches once running, beyond what its page names: Swagger UI's icons are data: URLs and its "Try it
# out" calls the API; ReDoc's search runs in a worker made from a blob: URL (Redocly/redoc#764), and its icons may be
# data: URLs too. tests/test_docs_pages.py shows in a browser that each page needs all of it and nothing more.
SWAGGER_UI_RUNTIME = {"img-src": {"data:"}, "connect-src": {"'self'"}}
REDOC_RUNTIME = {"img-src": {"data:"}, "worker-src": {"blob:"}}
A_YEAR = 365 * 24 * 3600


@pytest.mark.parametrize(("path", "runtime"), [("/schema", SWAGGER_UI_RUNTIME), ("/schema/swagger", SWAGGER_UI_RUNTIME),
                                               ("/schema/redoc", REDOC_RUNTIME)])
async def test_a_docs_page_loads_its_viewer_from_this_service_and_runs_only_its_own_inline_script(
    client: httpx.AsyncClient, path: str, runtime: dict[str, set[str]]
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    policy = security_headers(response)
    page = PageAssets()
    page.feed(response.text)
    # Its viewer's code and styles come from this service, nothing from a CDN; its icon is an empty data: URL.
    assert page.scripts and all(url.startswith("/schema/assets/") for url in page.scripts + page.stylesheets)
    assert page.icons == ["data:,"]
    # The inline script that starts the viewer carries this response's nonce; no other inline script may run.
    nonces = set(page.inline_script_nonces)
    assert len(nonces) == 1 and None not in nonces
    expected = {
        "default-src": {"'none'"}, "frame-ancestors": {"'none'"}, "base-uri": {"'none'"}, "form-action": {"'none'"},
        "script-src": {f"'nonce-{nonces.pop()}'", "'self'"},
        "style-src": {"'unsafe-inline'"} | ({"'self'"} if page.stylesheets else set()),
        "img-src": {"data:"},  # the icon
    }
    assert page.inline_styles  # what 'unsafe-inline' in style-src is for
    for directive, sources in runtime.items():
        expected[directive] = expected.get(directive, set()) | sources
    assert {directive: set(sources) for directive, sources in policy.items()} == expected
    again = csp(await client.get(path))
    assert again["script-src"] != policy["script-src"]  # a fresh nonce for every response
    # Each file is served under its viewer's version, so browsers may keep it for a year.
    for url in page.scripts + page.stylesheets:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        # a type nosniff lets a browser use (Python names .js either way, depending on the system's mime.types)
        kinds = ("text/css",) if url.endswith(".css") else ("text/javascript", "application/javascript")
        assert asset.headers["content-type"].partition(";")[0] in kinds, url
        assert asset.headers["cache-control"] == f"max-age={A_YEAR}, public, immutable"
        strict(asset)


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}


async def test_without_cors_allow_origins_no_other_origin_is_let_in(client: httpx.AsyncClient) -> None:
    asked = await client.options("/appointments", headers=preflight("https://app.clinic.example"))
    assert "access-control-allow-origin" not in asked.headers
    strict(asked)
    read = await client.get("/doctors", headers={"Origin": "https://app.clinic.example"})
    assert read.status_code == 200
    assert not [name for name in read.headers if name.startswith("access-control-")]


def test_cors_allow_origins_lets_in_exactly_those_origins(processes: Processes) -> None:
    api = processes.start_api({"CORS_ALLOW_ORIGINS": "https://app.clinic.example, http://localhost:3000"})
    for allowed in ("https://app.clinic.example", "http://localhost:3000"):
        asked = httpx.options(f"{api}/appointments", headers=preflight(allowed))
        assert asked.status_code == 204
        assert asked.headers["access-control-allow-origin"] == allowed
        assert {"authorization", "content-type"} <= set(asked.headers["access-control-allow-headers"].split(", "))
        assert "POST" in asked.headers["access-control-allow-methods"]
        strict(asked)
        read = httpx.get(f"{api}/doctors", headers={"Origin": allowed})
        assert read.headers["access-control-allow-origin"] == allowed
        assert "Origin" in read.headers["vary"]
        # A browser shows a page only the headers it is told it may: the status URL of a 202, Retry-After.
        assert {"location", "retry-after"} <= set(read.headers["access-control-expose-headers"].lower().split(", "))
        strict(read)
    for stranger in ("https://evil.example", "https://app.clinic.example.evil.example", "http://app.clinic.example"):
        asked = httpx.options(f"{api}/appointments", headers=preflight(stranger))
        assert "access-control-allow-origin" not in asked.headers
        read = httpx.get(f"{api}/doctors", headers={"Origin": stranger})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


# --- privacy: what each answer shows, and to whom --------------------------------------------------------------

DOCTOR_KEYS = {"id", "name", "specialty", "timezone", "created_at"}
SLOT_KEYS = {"start_time", "end_time", "local_start_time", "local_end_time", "availability_id"}
APPOINTMENT_TYPE_KEYS = {"id", "doctor_id", "name", "duration_minutes", "buffer_before_minutes",
                         "buffer_after_minutes", "min_notice_minutes", "max_days_ahead", "cancel_notice_minutes",
                         "active"}


def keys(value: dict[str, Any], expected: set[str]) -> None:
    assert set(value) == expected, f"unexpected {set(value) - expected}, missing {expected - set(value)}: {value}"


async def test_public_answers_carry_exactly_their_fields_and_nothing_of_anyone_else(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """What anyone may read without a token, field by field: no login email, no patient, no internal reason."""
    doctor = await factory.doctor(specialty="Cardiology", timezone="Europe/Berlin")
    await factory.weekly_hours(doctor, [(day(3).isoweekday(), "09:00", "12:00")])
    await factory.window(doctor, at(9), at(12))
    visit = await factory.appointment_type(doctor, duration_minutes=30, buffer_after_minutes=10)
    await factory.booked(await factory.patient(), doctor["id"], at(10), at(10.5))
    await factory.time_off(doctor, at(9, offset=4), at(12, offset=4), reason="surgery: private")
    doctor_id, span = doctor["id"], {"from": iso(day(2)), "to": iso(day(5))}

    listing = (await client.get("/doctors")).json()
    keys(listing, {"items", "limit", "offset", "total"})
    for item in listing["items"]:
        keys(item, DOCTOR_KEYS)
    ranked = (await client.get("/doctors", params={"sort": "next_available", "available_after": iso(day(2))})).json()
    for item in ranked["items"]:
        keys(item, DOCTOR_KEYS | {"next_available_slot"})
        if item["next_available_slot"] is not None:
            keys(item["next_available_slot"], SLOT_KEYS)
    keys((await client.get(f"/doctors/{doctor_id}")).json(), DOCTOR_KEYS)

    slots = (await client.get(f"/doctors/{doctor_id}/slots", params={**span, "appointment_type_id": visit["id"]}))
    keys(slots.json(), {"doctor_id", "duration", "slots", "next_from"})
    assert slots.json()["slots"]
    for slot in slots.json()["slots"]:
        keys(slot, SLOT_KEYS)
    for query in (span, {}):
        available = (await client.get(f"/doctors/{doctor_id}/availability", params=query)).json()
        assert available
        for interval in available:
            keys(interval, {"id", "doctor_id", "start_time", "end_time", "local_start_time", "local_end_time",
                            "free"})
            for free in interval["free"]:
                keys(free, {"start_time", "end_time"})
    hours = (await client.get(f"/doctors/{doctor_id}/weekly-hours")).json()
    keys(hours, {"timezone", "hours"})
    for interval in hours["hours"]:
        keys(interval, {"weekday", "start", "end"})
    types = (await client.get(f"/doctors/{doctor_id}/appointment-types")).json()
    assert types
    for appointment_type in types:
        keys(appointment_type, APPOINTMENT_TYPE_KEYS)
    keys((await client.get("/health")).json(), {"status", "mysql", "redis"})
    everything = " ".join([(await client.get(path, params=query)).text for path, query in (
        ("/doctors", {}), (f"/doctors/{doctor_id}/availability", span), (f"/doctors/{doctor_id}/slots", span))])
    assert doctor["email"] not in everything and "surgery" not in everything


async def test_a_patients_email_is_shown_on_their_appointments_to_their_doctor_and_to_them_only(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(10.5))
    assert appointment["patient_email"] == patient["email"]
    path = f"/appointments/{appointment['id']}"
    for user in (doctor, patient):
        seen = (await client.get(path, headers=user.headers)).json()
        assert seen["patient_email"] == patient["email"] and seen["patient_name"] == patient["name"]
        mine = (await client.get("/appointments/my-appointments", headers=user.headers)).json()["items"]
        assert [a["patient_email"] for a in mine] == [patient["email"]]
    schedule = (await client.get("/doctors/my-appointments", headers=doctor.headers)).json()["items"]
    assert [a["patient_email"] for a in schedule] == [patient["email"]]
    for stranger in (other_doctor, other_patient):
        problem(await client.get(path, headers=stranger.headers), 404)
        assert (await client.get("/appointments/my-appointments", headers=stranger.headers)).json()["items"] == []
    cancelled = await client.delete(path, headers=doctor.headers, params={"reason": "ill"})
    assert cancelled.json()["patient_email"] == patient["email"]
