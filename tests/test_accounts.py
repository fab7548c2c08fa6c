"""Accounts: registration rules, login and its tokens, token attacks, role guards, password reset through a
real SMTP server, and the login / forgot-password rate limits kept in Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import statistics
import subprocess
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import httpx
import jwt
import pymysql
import pytest
import redis
from aiosmtpd.controller import Controller
from jwt.warnings import InsecureKeyLengthWarning
from yoyo import get_backend, read_migrations

from service.core.accounts import PrioritySlots
from service.core.db import MIGRATIONS_DIR
from service.core.settings import Settings
from tests import support
from tests.factory import PASSWORD, Factory, User, at, iso
from tests.support import ROOT, Processes, claim_redis_db, free_port, release_redis_db

PROBLEM = "application/problem+json"
USER_KEYS = {"id", "email", "name", "role", "specialty", "created_at"}


def assert_problem(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """An RFC 9457 problem with this status; with `fields`, each is named in errors[].field."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    if fields:
        named = {error["field"] for error in body["errors"]}
        assert set(fields) <= named, body
    return body


def named_in_messages(body: dict[str, Any]) -> set[str]:
    """The `names` quoted in the messages (a missing or unknown field is reported against the whole body)."""
    return {name for error in body["errors"] for name in re.findall(r"`(\w+)`", error["message"])}


def assert_unauthenticated(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    return body


def rows(mysql: pymysql.Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    with mysql.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def extra_api(processes: Processes, env: dict[str, str]) -> Iterator[str]:
    """An API process of its own for one test or module, stopped afterwards."""
    url = processes.start_api(env)
    proc = processes.running[-1]
    try:
        yield url
    finally:
        processes.stop(proc)


def client_from(url: str, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connections come from `address` (any of 127.0.0.0/8 reaches the server on Linux)."""
    return httpx.AsyncClient(base_url=url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


# --- register -----------------------------------------------------------------------------------------------

def registration(**fields: Any) -> dict[str, Any]:
    return {"email": f"user-{uuid.uuid4().hex[:12]}@clinic.example", "name": "Ada Lovelace",
            "role": "Patient", "password": PASSWORD, **fields}


async def test_register_returns_the_user_never_the_hash(
    client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    response = await client.post("/auth/register", json={
        "email": "  Ada.Lovelace@Clinic.EXAMPLE ", "name": " Ada Lovelace ", "role": "Doctor",
        "password": PASSWORD, "specialty": "Cardiology"})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    user = response.json()
    assert set(user) == USER_KEYS
    assert "password" not in response.text and "password_hash" not in response.text
    assert user["email"] == "ada.lovelace@clinic.example"
    assert (user["name"], user["role"], user["specialty"]) == ("Ada Lovelace", "Doctor", "Cardiology")
    assert abs(datetime.fromisoformat(user["created_at"]) - datetime.now(UTC)) < timedelta(minutes=1)

    [row] = rows(mysql, "SELECT * FROM users")
    assert row["id"] == user["id"]
    assert row["email"] == "ada.lovelace@clinic.example"
    assert row["token_version"] == 0
    assert row["password_hash"] != PASSWORD
    assert row["password_hash"].startswith("$2b$04$")  # bcrypt, at the test's cost
    assert bcrypt.checkpw(PASSWORD.encode(), row["password_hash"].encode())


@pytest.mark.parametrize("duplicate", ["ada@x.example", " ADA@x.example ", "Ada@X.Example"])
async def test_emails_are_unique_whatever_their_case(
    client: httpx.AsyncClient, mysql: pymysql.Connection, duplicate: str
) -> None:
    first = await client.post("/auth/register", json=registration(email="ada@x.example"))
    assert first.status_code == 201, first.text
    again = await client.post("/auth/register", json=registration(email=duplicate, role="Doctor"))
    assert_problem(again, 409)
    assert rows(mysql, "SELECT email, role FROM users") == [{"email": "ada@x.example", "role": "Patient"}]


async def test_emails_are_stored_in_nfkc_case_folded_and_accents_make_another_address(
    client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    """One spelling per address: full width, upper case, ligatures and composed or decomposed accents are folded
    away; an accent is a different letter, so `ádá@` and `ada@` are two addresses (two accounts)."""
    plain = await client.post("/auth/register", json=registration(email="ＡＤＡ.Lovelace@Clinic.example"))
    assert plain.status_code == 201, plain.text
    assert plain.json()["email"] == "ada.lovelace@clinic.example"
    accented = await client.post("/auth/register", json=registration(email="ÁDÁ.Lovelace@clinic.example"))
    assert accented.status_code == 201, accented.text
    assert accented.json()["email"] == "ádá.lovelace@clinic.example"
    ligature = await client.post("/auth/register", json=registration(email="Ｇraﬁn@clinic.example"))
    assert ligature.status_code == 201 and ligature.json()["email"] == "grafin@clinic.example", ligature.text
    # the same addresses spelled otherwise
    for again in ("ada.lovelace@clinic.example", "ａｄａ.ＬＯＶＥＬＡＣＥ@clinic.example",
                  "a\u0301da\u0301.lovelace@clinic.example", "ÁDÁ.LOVELACE@CLINIC.EXAMPLE", "grafin@clinic.example"):
        assert_problem(await client.post("/auth/register", json=registration(email=again)), 409)
    assert sorted(row["email"] for row in rows(mysql, "SELECT email FROM users")) == [
        "ada.lovelace@clinic.example", "grafin@clinic.example", "ádá.lovelace@clinic.example"]
    # each spelling logs in to its own account
    for spelled, user in (("Ａda.lovelace@clinic.example", plain.json()),
                          ("a\u0301dÁ.lovelace@clinic.example", accented.json())):
        login = await client.post("/auth/login", json={"email": spelled, "password": PASSWORD})
        assert login.status_code == 200, login.text
        me = await client.get("/auth/me", headers=bearer(login.json()["access_token"]))
        assert me.json()["id"] == user["id"]


@pytest.mark.parametrize(
    "address",
    [
        # 250 characters in, 500 after lower-casing or folding (İ becomes i and a combining dot)
        pytest.param("İ" * 240 + "@x.example", id="longer than 255 once folded"),
        # U+FDFA is one character, eighteen once NFKC spells it out
        pytest.param("\ufdfa" * 20 + "@x.example", id="longer than 255 once in NFKC"),
        # the full-width at sign is an ASCII @ in NFKC: two of them
        pytest.param("a\uff20b@x.example", id="two at signs once in NFKC"),
        # a diaeresis alone is a space and a combining diaeresis in NFKC
        pytest.param("a\u00a8b@x.example", id="a space once in NFKC"),
    ],
)
async def test_registering_an_email_that_normalizes_to_no_address_is_a_400(
    client: httpx.AsyncClient, mysql: pymysql.Connection, address: str
) -> None:
    assert_problem(await client.post("/auth/register", json=registration(email=address)), 400, "email")
    assert rows(mysql, "SELECT id FROM users") == []
    # no account can have it: logging in or asking for a reset with it answers as for any unknown email
    assert_unauthenticated(await client.post("/auth/login", json={"email": address, "password": PASSWORD}))
    assert (await client.post("/auth/forgot-password", json={"email": address})).status_code == 202


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("p" * 8, id="8 bytes"),
        pytest.param("p" * 72, id="72 ascii bytes"),
        pytest.param("é" * 36, id="72 bytes in 36 two-byte chars"),
        pytest.param("€" * 24, id="72 bytes in 24 three-byte chars"),
    ],
)
async def test_passwords_of_8_to_72_bytes_are_accepted(client: httpx.AsyncClient, password: str) -> None:
    body = registration(password=password)
    response = await client.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    login = await client.post("/auth/login", json={"email": body["email"], "password": password})
    assert login.status_code == 200, login.text


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("p" * 7, id="7 bytes"),
        pytest.param("p" * 73, id="73 ascii bytes"),
        pytest.param("p" * 71 + "é", id="73 bytes in 72 chars"),
        pytest.param("é€" * 25, id="125 bytes in 50 chars"),
        pytest.param("€" * 25, id="75 bytes in 25 chars"),
    ],
)
async def test_passwords_outside_8_to_72_bytes_are_refused(
    client: httpx.AsyncClient, mysql: pymysql.Connection, password: str
) -> None:
    response = await client.post("/auth/register", json=registration(password=password))
    assert_problem(response, 400, "password")
    assert rows(mysql, "SELECT id FROM users") == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "\t\n"}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"role": "Nurse"}, "role"),
        ({"role": "patient"}, "role"),
        ({"role": None}, "role"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "a b@c.example"}, "email"),
        ({"password": 12345678}, "password"),
        ({"specialty": "Cardiology"}, "specialty"),  # a patient has none
        ({"specialty": "  "}, "specialty"),
    ],
)
async def test_invalid_registrations_are_400_problems_naming_the_field(
    client: httpx.AsyncClient, mysql: pymysql.Connection, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/auth/register", json=registration(**changes))
    assert_problem(response, 400, field)
    assert rows(mysql, "SELECT id FROM users") == []


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != field}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(registration(role="Doctor", is_admin=True), "is_admin", id="unknown field"),
        *(pytest.param(without(registration(), field), field, id=f"no {field}")
          for field in ("email", "name", "role", "password")),
    ],
)
async def test_an_unknown_or_missing_field_is_refused_and_named(
    client: httpx.AsyncClient, mysql: pymysql.Connection, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await client.post("/auth/register", json=body), 400)
    assert field in named_in_messages(problem), problem
    assert rows(mysql, "SELECT id FROM users") == []


async def test_an_unknown_or_missing_field_is_named_in_errors_field(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/auth/register", json=registration(is_admin=True)), 400, "is_admin")
    assert_problem(await client.post("/auth/register", json=without(registration(), "email")), 400, "email")


async def test_a_name_of_255_chars_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/register", json=registration(name="n" * 255))
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "n" * 255


# --- login and the current user -----------------------------------------------------------------------------

async def test_login_gives_an_hs256_bearer_token_with_every_claim(
    client: httpx.AsyncClient, factory: Factory, settings: Settings
) -> None:
    doctor = await factory.doctor(specialty="Neurology")
    response = await client.post("/auth/login", json={"email": f"  {doctor['email'].upper()} ",
                                                      "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60

    token = body["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == str(doctor["id"]) and isinstance(claims["sub"], str)
    assert claims["role"] == "Doctor"
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16

    again = await client.post("/auth/login", json={"email": doctor["email"], "password": PASSWORD})
    assert jwt.decode(again.json()["access_token"], settings.jwt_secret, algorithms=["HS256"])["jti"] != \
        claims["jti"]

    me = await client.get("/auth/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json() == {key: doctor[key] for key in USER_KEYS}
    assert "password" not in me.text


async def test_me_is_the_caller(client: httpx.AsyncClient, factory: Factory) -> None:
    patient, doctor = await factory.patient(), await factory.doctor()
    for user in (patient, doctor):
        response = await client.get("/auth/me", headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {key: user[key] for key in USER_KEYS}


async def test_unknown_email_and_wrong_password_get_the_same_401_in_the_same_time(
    processes: Processes, client: httpx.AsyncClient
) -> None:
    """At a real bcrypt cost (10: ~60 ms a check), so skipping the check for an unknown email would show."""
    rounds = 10
    stored = bcrypt.hashpw(b"calibrate", bcrypt.gensalt(rounds))
    checks = []
    for _ in range(3):
        started = time.perf_counter()
        bcrypt.checkpw(b"calibrate", stored)
        checks.append(time.perf_counter() - started)
    one_check = min(checks)

    with extra_api(processes, {"BCRYPT_ROUNDS": str(rounds)}) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            body = registration()
            assert (await api.post("/auth/register", json=body)).status_code == 201
            attempts = {"unknown email": {"email": "nobody@clinic.example", "password": PASSWORD},
                        "wrong password": {"email": body["email"], "password": PASSWORD + "!"}}
            await api.post("/auth/login", json=attempts["unknown email"])  # warm up the connection
            durations: dict[str, list[float]] = {name: [] for name in attempts}
            answers: dict[str, set[tuple[int, str, str]]] = {name: set() for name in attempts}
            for _ in range(5):
                for name, attempt in attempts.items():
                    started = time.perf_counter()
                    response = await api.post("/auth/login", json=attempt)
                    durations[name].append(time.perf_counter() - started)
                    assert_unauthenticated(response)
                    answers[name].add((response.status_code, response.headers["www-authenticate"],
                                       response.text))
    assert len(answers["unknown email"]) == 1
    assert answers["unknown email"] == answers["wrong password"]

    unknown, wrong = (statistics.median(durations[name]) for name in attempts)
    slower, faster = max(unknown, wrong), min(unknown, wrong)
    assert faster > one_check / 3, (unknown, wrong, one_check)  # both paths really run bcrypt
    assert slower < 2 * faster + 0.03, (unknown, wrong)  # no decoy would be ~60 ms against ~3 ms


async def test_login_with_a_missing_or_empty_password_is_400(client: httpx.AsyncClient) -> None:
    missing = assert_problem(await client.post("/auth/login", json={"email": "a@b.example"}), 400)
    assert "password" in named_in_messages(missing)
    assert_problem(await client.post("/auth/login", json={"email": "a@b.example", "password": ""}), 400,
                   "password")


# --- token attacks ------------------------------------------------------------------------------------------

OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256-abcdefgh"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims_for(user: User, **changes: Any) -> dict[str, Any]:
    """The claims /auth/login would issue for `user`; a change to None drops the claim."""
    now = int(time.time())
    claims = {"sub": str(user["id"]), "role": user["role"], "ver": 0, "iat": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, **changes}
    return {key: value for key, value in claims.items() if value is not None}


def signed(user: User, secret: str, algorithm: str = "HS256", **changes: Any) -> str:
    with warnings.catch_warnings():  # the test secret is short for HS512: true, and beside the point here
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims_for(user, **changes), secret, algorithm=algorithm)


def alg_none(user: User, _: str) -> str:
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims_for(user))}."


def tampered_signature(user: User, secret: str) -> str:
    header, payload, signature = signed(user, secret).split(".")
    return f"{header}.{payload}.{('A' if signature[0] != 'A' else 'B') + signature[1:]}"


def tampered_claims(user: User, secret: str) -> str:
    header, _, signature = signed(user, secret).split(".")
    return f"{header}.{segment(claims_for(user, role='Doctor'))}.{signature}"


def tampered_subject(user: User, secret: str) -> str:
    header, _, signature = signed(user, secret).split(".")
    return f"{header}.{segment(claims_for(user, sub=str(user['id'] + 1)))}.{signature}"


def expired(user: User, secret: str) -> str:
    now = int(time.time())
    return signed(user, secret, iat=now - 31 * 60, exp=now - 60)


TOKEN_ATTACKS: dict[str, Callable[[User, str], str]] = {
    "alg none": alg_none,
    "tampered signature": tampered_signature,
    "tampered claims (role)": tampered_claims,
    "tampered claims (sub)": tampered_subject,
    "expired": expired,
    "signed with another secret": lambda user, _: signed(user, OTHER_SECRET),
    "HS512 with the real secret": lambda user, secret: signed(user, secret, "HS512"),
    "HS384 with the real secret": lambda user, secret: signed(user, secret, "HS384"),
    "no jti": lambda user, secret: signed(user, secret, jti=None),
    "no sub": lambda user, secret: signed(user, secret, sub=None),
    "no role": lambda user, secret: signed(user, secret, role=None),
    "no iat": lambda user, secret: signed(user, secret, iat=None),
    "no exp": lambda user, secret: signed(user, secret, exp=None),
    "no token version": lambda user, secret: signed(user, secret, ver=None),
    "sub not a user id": lambda user, secret: signed(user, secret, sub="admin"),
    "role other than the user's": lambda user, secret: signed(user, secret, role="Doctor"),
    "stale token version": lambda user, secret: signed(user, secret, ver=1),
    "garbage": lambda user, secret: "not.a.token",
}


@pytest.mark.parametrize("attack", list(TOKEN_ATTACKS))
async def test_forged_and_broken_tokens_are_401(
    client: httpx.AsyncClient, factory: Factory, settings: Settings, attack: str
) -> None:
    patient = await factory.patient()
    assert (await client.get("/auth/me", headers=patient.headers)).status_code == 200  # the real one works
    token = TOKEN_ATTACKS[attack](patient, settings.jwt_secret)
    assert_unauthenticated(await client.get("/auth/me", headers=bearer(token)))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="no header"),
        pytest.param("Basic dXNlcjpwYXNzd29yZA==", id="basic credentials"),
        pytest.param("Basic {token}", id="valid token under the basic scheme"),
        pytest.param("Token {token}", id="valid token under another scheme"),
        pytest.param("{token}", id="valid token without a scheme"),
        pytest.param("Bearer", id="bearer without a token"),
        pytest.param("Bearer garbage", id="bearer garbage"),
    ],
)
async def test_authorization_header_must_be_a_bearer_token(
    client: httpx.AsyncClient, factory: Factory, header: str | None
) -> None:
    patient = await factory.patient()
    headers = {} if header is None else {"Authorization": header.format(token=patient["token"])}
    assert_unauthenticated(await client.get("/auth/me", headers=headers))


async def test_the_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient, factory: Factory) -> None:
    patient = await factory.patient()
    response = await client.get("/auth/me", headers={"Authorization": f"bearer {patient['token']}"})
    assert response.status_code == 200, response.text


async def test_a_deleted_users_token_is_401(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    patient = await factory.patient(login=True)
    assert (await client.get("/auth/me", headers=patient.headers)).status_code == 200
    with mysql.cursor() as cursor:
        cursor.execute("DELETE FROM users WHERE id = %s", (patient["id"],))
    assert_unauthenticated(await client.get("/auth/me", headers=patient.headers))


# --- role guards --------------------------------------------------------------------------------------------

async def test_a_doctor_cannot_book_as_a_patient(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, other = await factory.doctor(), await factory.doctor()
    await factory.window(other, at(9), at(17))
    response = await client.post("/appointments", headers=doctor.headers, json={
        "doctor_id": other["id"], "start_time": iso(at(10)), "end_time": iso(at(11))})
    assert_problem(response, 403)
    assert rows(mysql, "SELECT id FROM booking_requests") == []


async def test_a_patient_cannot_publish_availability(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    patient = await factory.patient()
    response = await client.post("/doctors/availability", headers=patient.headers,
                                 json={"start_time": iso(at(9)), "end_time": iso(at(17))})
    assert_problem(response, 403)
    assert rows(mysql, "SELECT id FROM availabilities") == []


# --- forgot and reset password, through a real SMTP server --------------------------------------------------

class Inbox(support.Inbox):
    """Every message the SMTP server was given; the reset tokens in them."""

    async def wait_for(self, address: str, count: int = 1, seconds: float = 10) -> list[str]:
        """The reset tokens of the first `count` emails to `address`, waiting for them to arrive."""
        deadline = time.monotonic() + seconds
        while len(self.to(address)) < count:
            assert time.monotonic() < deadline, f"no email to {address} within {seconds} s"
            await asyncio.sleep(0.05)
        tokens = []
        for message in self.to(address)[:count]:
            assert message["Subject"] == "Reset your password"
            text = message.get_body(("plain",)).get_content()
            match = re.search(r"^ {4}([\w-]+)\r?$", text, re.MULTILINE)
            assert match, text
            tokens.append(match.group(1))
        return tokens


class Mail:
    def __init__(self, inbox: Inbox, api: httpx.AsyncClient) -> None:
        self.inbox = inbox
        self.api = api


@pytest.fixture(scope="module")
def mail_stack(processes: Processes, test_env: dict[str, str]) -> Iterator[tuple[Inbox, str]]:
    """An SMTP server, and an API plus a worker of their own that send through it.

    They share MySQL with the rest of the suite but use a Redis DB of their own, so their queue (and the
    send_email job) is theirs alone: the shared workers, which log email instead of sending it, never see it,
    and nothing of the shared stack has to be stopped. The worker also runs the sweep against the shared
    MySQL, so it lives only as long as this module, which leaves no booking pending.
    """
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    server = test_env["REDIS_URL"].rsplit("/", 1)[0]
    redis_db = claim_redis_db(server)
    redis_url = f"{server}/{redis_db}"
    env = {"REDIS_URL": redis_url, "SMTP_URL": f"smtp://127.0.0.1:{controller.port}"}
    worker: subprocess.Popen[bytes] | None = None
    try:
        with extra_api(processes, env) as url:
            worker = processes.start_worker(env)
            yield inbox, url
    finally:
        if worker is not None:
            processes.stop(worker)
        controller.stop()
        redis.Redis.from_url(redis_url).flushdb()
        release_redis_db(server, redis_db)


@pytest.fixture
async def mail(mail_stack: tuple[Inbox, str], client: httpx.AsyncClient) -> AsyncIterator[Mail]:
    inbox, url = mail_stack
    inbox.messages.clear()
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        yield Mail(inbox, api)


async def forgot(mail: Mail, address: str) -> httpx.Response:
    response = await mail.api.post("/auth/forgot-password", json={"email": address})
    assert response.status_code == 202, response.text
    return response


async def test_forgot_password_answers_alike_and_emails_a_token_kept_only_as_a_hash(
    mail: Mail, factory: Factory, mysql: pymysql.Connection, settings: Settings
) -> None:
    patient = await factory.patient()
    unknown = await forgot(mail, "nobody@clinic.example")
    known = await forgot(mail, f" {patient['email'].upper()} ")
    assert unknown.json() == known.json()
    assert set(known.json()) == {"detail"}

    [token] = await mail.inbox.wait_for(patient["email"])
    assert token not in known.text
    assert len(token) >= 32
    message = mail.inbox.to(patient["email"])[0]
    assert message["From"] == settings.mail_from

    [row] = rows(mysql, "SELECT * FROM password_reset_tokens")
    assert row["user_id"] == patient["id"]
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {str(value) for value in row.values()}
    assert row["used_at"] is None
    now = datetime.now(UTC).replace(tzinfo=None)
    assert abs(row["expires_at"] - (now + timedelta(minutes=30))) < timedelta(minutes=1)
    assert row["expires_at"] - row["created_at"] == timedelta(minutes=30)

    await asyncio.sleep(0.3)  # nothing is sent for the unknown address
    assert [message["To"] for message in mail.inbox.messages] == [patient["email"]]


async def test_reset_password_changes_it_once_and_retires_older_access_tokens(
    mail: Mail, factory: Factory, client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    patient = await factory.patient(login=True)
    assert (await client.get("/auth/me", headers=patient.headers)).status_code == 200
    await forgot(mail, patient["email"])
    [token] = await mail.inbox.wait_for(patient["email"])

    new_password = "a brand new passphrase"
    reset = await mail.api.post("/auth/reset-password", json={"token": token, "new_password": new_password})
    assert reset.status_code == 204, reset.text
    assert reset.content == b""

    old = await client.post("/auth/login", json={"email": patient["email"], "password": PASSWORD})
    assert_unauthenticated(old)
    new = await client.post("/auth/login", json={"email": patient["email"], "password": new_password})
    assert new.status_code == 200, new.text

    # the access token from before the change is dead on every API process; the new one works
    assert_unauthenticated(await client.get("/auth/me", headers=patient.headers))
    assert_unauthenticated(await mail.api.get("/auth/me", headers=patient.headers))
    me = await client.get("/auth/me", headers=bearer(new.json()["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == patient["id"]

    [user] = rows(mysql, "SELECT token_version, password_hash FROM users WHERE id = %s", patient["id"])
    assert user["token_version"] == 1
    assert bcrypt.checkpw(new_password.encode(), user["password_hash"].encode())
    [row] = rows(mysql, "SELECT used_at FROM password_reset_tokens")
    assert row["used_at"] is not None

    again = await mail.api.post("/auth/reset-password", json={"token": token, "new_password": "yet another"})
    assert_problem(again, 400, "token")
    still = await client.post("/auth/login", json={"email": patient["email"], "password": new_password})
    assert still.status_code == 200, still.text


async def test_asking_again_retires_the_earlier_token(
    mail: Mail, factory: Factory, client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    patient = await factory.patient()
    await forgot(mail, patient["email"])
    [first] = await mail.inbox.wait_for(patient["email"])
    await forgot(mail, patient["email"])
    tokens = await mail.inbox.wait_for(patient["email"], 2)
    [second] = [token for token in tokens if token != first]

    stale = await mail.api.post("/auth/reset-password", json={"token": first, "new_password": "the 1st one"})
    assert_problem(stale, 400, "token")
    fresh = await mail.api.post("/auth/reset-password", json={"token": second, "new_password": "the 2nd one"})
    assert fresh.status_code == 204, fresh.text
    login = await client.post("/auth/login", json={"email": patient["email"], "password": "the 2nd one"})
    assert login.status_code == 200, login.text
    assert len(rows(mysql, "SELECT id FROM password_reset_tokens WHERE used_at IS NOT NULL")) == 2


async def test_an_expired_reset_token_is_refused(
    mail: Mail, factory: Factory, client: httpx.AsyncClient, mysql: pymysql.Connection
) -> None:
    patient = await factory.patient()
    await forgot(mail, patient["email"])
    [token] = await mail.inbox.wait_for(patient["email"])
    with mysql.cursor() as cursor:
        cursor.execute("UPDATE password_reset_tokens SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")

    response = await mail.api.post("/auth/reset-password", json={"token": token, "new_password": "too late"})
    assert_problem(response, 400, "token")
    login = await client.post("/auth/login", json={"email": patient["email"], "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert rows(mysql, "SELECT token_version FROM users") == [{"token_version": 0}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "made-up-token", "new_password": "long enough"}, "token"),
        ({"token": "", "new_password": "long enough"}, "token"),
        ({"token": "{token}", "new_password": "short"}, "new_password"),
        ({"token": "{token}", "new_password": "€" * 25}, "new_password"),
    ],
)
async def test_a_bad_reset_is_a_400_naming_the_field_and_keeps_the_token(
    mail: Mail, factory: Factory, mysql: pymysql.Connection, body: dict[str, str], field: str
) -> None:
    patient = await factory.patient()
    await forgot(mail, patient["email"])
    [token] = await mail.inbox.wait_for(patient["email"])
    response = await mail.api.post("/auth/reset-password",
                                   json={key: value.format(token=token) for key, value in body.items()})
    assert_problem(response, 400, field)
    # a refused attempt does not spend the token
    ok = await mail.api.post("/auth/reset-password", json={"token": token, "new_password": "long enough"})
    assert ok.status_code == 204, ok.text


# --- rate limits --------------------------------------------------------------------------------------------

LIMIT = 3


@pytest.fixture(scope="module")
def limited_apis(processes: Processes) -> Iterator[list[str]]:
    """Two API processes allowing 3 of each limited action a minute (login, forgot-password, reset-password,
    register), sharing the test Redis DB, trusting X-Forwarded-For from 127.0.0.1 only."""
    env = {"LOGIN_RATE_LIMIT_PER_MINUTE": str(LIMIT), "REGISTER_RATE_LIMIT_PER_MINUTE": str(LIMIT),
           "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with extra_api(processes, env) as first, extra_api(processes, env) as second:
        yield [first, second]


def assert_too_many(response: httpx.Response) -> None:
    assert_problem(response, 429)
    assert 1 <= int(response.headers["retry-after"]) <= 60


def login_body(address: str, password: str = "wrong password") -> dict[str, str]:
    return {"email": address, "password": password}


def attempt_body(action: str, address: str, password: str = "wrong password") -> dict[str, str]:
    """A login, or a forgot-password (which takes the email alone)."""
    return login_body(address, password) if action == "login" else {"email": address}


async def test_logins_from_one_address_are_limited_per_path(
    limited_apis: list[str], client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    async with client_from(limited_apis[0]) as api:
        # a different account each time: only the address limit can stop the 4th
        for number in range(LIMIT):
            assert_unauthenticated(await api.post("/auth/login", json=login_body(f"u{number}@x.example")))
        assert_too_many(await api.post("/auth/login", json=login_body("u9@x.example")))
        # the address limit counts per path: asking for a reset from the same address still works
        assert (await api.post("/auth/forgot-password", json={"email": "u9@x.example"})).status_code == 202
    keys = {key.decode() for key in redis_client.keys("rate-limit:*")}
    assert {"rate-limit:login:address:127.0.0.1", "rate-limit:forgot-password:address:127.0.0.1"} <= keys, keys


async def test_logins_for_one_account_are_limited_whatever_the_address(
    limited_apis: list[str], factory: Factory, redis_client: redis.Redis
) -> None:
    victim, other = await factory.patient(), await factory.patient()
    url = limited_apis[0]
    async with client_from(url, "127.0.0.1") as first, client_from(url, "127.0.0.2") as second:
        for attempt in range(LIMIT):
            address = victim["email"] if attempt else f"  {victim['email'].upper()} "  # one account, any case
            assert_unauthenticated(await first.post("/auth/login", json=login_body(address)))
        # a fresh address, even with the right password: the account has had its 3 tries this minute
        assert_too_many(await second.post("/auth/login", json=login_body(victim["email"], PASSWORD)))
        # that address is not limited for another account, nor is the account for another action
        ok = await second.post("/auth/login", json=login_body(other["email"], PASSWORD))
        assert ok.status_code == 200, ok.text
        reset = await second.post("/auth/forgot-password", json={"email": victim["email"]})
        assert reset.status_code == 202, reset.text

    key = f"rate-limit:login:user:{victim['id']}"  # the account, found by its email however spelled
    assert int(redis_client.get(key)) == LIMIT + 1
    assert 0 < redis_client.ttl(key) <= 60


async def test_forgot_password_is_limited_per_address_and_per_account(
    limited_apis: list[str], client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    url = limited_apis[0]
    async with client_from(url, "127.0.0.1") as first, client_from(url, "127.0.0.2") as second:
        answers = [await first.post("/auth/forgot-password", json={"email": "nobody@clinic.example"})
                   for _ in range(LIMIT)]
        assert [answer.status_code for answer in answers] == [202] * LIMIT
        # per account: the same email from another address (whose own count is still 0)
        assert_too_many(await second.post("/auth/forgot-password", json={"email": "nobody@clinic.example"}))
        # per address: another email from the first address
        assert_too_many(await first.post("/auth/forgot-password", json={"email": "someone@clinic.example"}))
        other = await second.post("/auth/forgot-password", json={"email": "else@clinic.example"})
        assert other.status_code == 202, other.text
    # no such account: counted on the email's normal form (hashed)
    key = f"rate-limit:forgot-password:email:{hashlib.sha256(b'nobody@clinic.example').hexdigest()}"
    assert redis_client.exists(key)


async def test_limits_hold_across_api_processes(
    limited_apis: list[str], client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    # the address limit, alternating processes with a different account each time
    clients = [client_from(url) for url in limited_apis]
    try:
        for number in range(LIMIT):
            api = clients[number % 2]
            assert_unauthenticated(await api.post("/auth/login", json=login_body(f"a{number}@x.example")))
        assert_too_many(await clients[LIMIT % 2].post("/auth/login", json=login_body("a9@x.example")))
    finally:
        for api in clients:
            await api.aclose()

    # the account limit, alternating processes and addresses
    clients = [client_from(limited_apis[number % 2], f"127.0.0.{number + 2}") for number in range(LIMIT + 1)]
    try:
        for api in clients[:LIMIT]:
            assert_unauthenticated(await api.post("/auth/login", json=login_body("target@x.example")))
        assert_too_many(await clients[LIMIT].post("/auth/login", json=login_body("target@x.example")))
    finally:
        for api in clients:
            await api.aclose()
    assert redis_client.exists(f"rate-limit:login:email:{hashlib.sha256(b'target@x.example').hexdigest()}")


def spellings(address: str) -> list[str]:
    """Ways to write one ASCII address that NFKC and case folding make one: upper case, full width, both."""
    local, domain = address.split("@")
    full_width = "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in local)
    return [address.upper(), f"{full_width}@{domain}", f"{full_width.upper()}@{domain.upper()}",
            f"{full_width[0]}{local[1:]}@{domain}"]


@pytest.mark.parametrize(("action", "answered"), [("login", 401), ("forgot-password", 202)])
async def test_one_account_has_one_limit_however_its_email_is_spelled(
    limited_apis: list[str], factory: Factory, redis_client: redis.Redis, action: str, answered: int
) -> None:
    """`ＡＤＡ@x` and `ada@x` are one account after NFKC and case folding, so they count against one limit: spelling
    the address many ways multiplies neither the password guesses nor the reset emails sent to the victim."""
    victim = await factory.patient()
    written = spellings(victim["email"])
    async with client_from(limited_apis[0], "127.0.0.3") as first, client_from(limited_apis[0], "127.0.0.4") as second:
        for address in written[:LIMIT]:
            answer = await first.post(f"/auth/{action}", json=attempt_body(action, address))
            assert answer.status_code == answered, answer.text
        # another spelling still, from another address, with the right password
        assert_too_many(await second.post(f"/auth/{action}", json=attempt_body(action, written[LIMIT], PASSWORD)))
    # counted on the account's id, not on any spelling of its email
    assert int(redis_client.get(f"rate-limit:{action}:user:{victim['id']}")) == LIMIT + 1


async def test_registration_is_limited_per_address_409s_included(
    limited_apis: list[str], factory: Factory, mysql: pymysql.Connection
) -> None:
    """Each registration costs a bcrypt hash and its 409 tells whether an email has an account: both are limited."""
    existing = await factory.patient()
    url = limited_apis[0]
    async with client_from(url, "127.0.0.7") as first, client_from(url, "127.0.0.8") as second:
        assert (await first.post("/auth/register", json=registration())).status_code == 201
        for _ in range(LIMIT - 1):  # is this email taken? yes: 409
            assert_problem(await first.post("/auth/register", json=registration(email=existing["email"])), 409)
        assert_too_many(await first.post("/auth/register", json=registration()))
        assert_too_many(await first.post("/auth/register", json=registration(email=existing["email"])))
        # per address: another one may still register
        assert (await second.post("/auth/register", json=registration())).status_code == 201
    assert len(rows(mysql, "SELECT id FROM users")) == 3


async def test_reset_password_is_limited_per_address(limited_apis: list[str]) -> None:
    """Guessing reset tokens is hopeless (32 random bytes), and still limited like guessing passwords."""
    async with client_from(limited_apis[0], "127.0.0.9") as api:
        for _ in range(LIMIT):
            made_up = {"token": uuid.uuid4().hex, "new_password": "long enough"}
            assert_problem(await api.post("/auth/reset-password", json=made_up), 400, "token")
        assert_too_many(await api.post("/auth/reset-password",
                                       json={"token": uuid.uuid4().hex, "new_password": "long enough"}))


async def test_concurrent_logins_through_two_processes_are_limited_to_exactly_the_limit(
    limited_apis: list[str], client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    """The address counter is one atomic INCR in Redis: no two processes can both read 2 and both let a 3rd in."""
    clients = [client_from(url, "127.0.0.10") for url in limited_apis]
    try:
        answers = await asyncio.gather(*(
            clients[number % 2].post("/auth/login", json=login_body(f"n{number}@x.example"))
            for number in range(40)))  # a different account each: only the address limit applies
    finally:
        for api in clients:
            await api.aclose()
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {401: LIMIT, 429: 40 - LIMIT}, statuses
    assert all(1 <= int(answer.headers["retry-after"]) <= 60 for answer in answers if answer.status_code == 429)
    assert int(redis_client.get("rate-limit:login:address:127.0.0.10")) == 40


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    limited_apis: list[str], client: httpx.AsyncClient
) -> None:
    """FORWARDED_ALLOW_IPS=127.0.0.1: a client at 127.0.0.11 cannot pick its own address by sending the header,
    while the proxy at 127.0.0.1 has each of its clients counted on its own."""
    url = limited_apis[0]
    async with client_from(url, "127.0.0.11") as untrusted, client_from(url, "127.0.0.1") as proxy:
        for number in range(LIMIT):
            forged = {"X-Forwarded-For": f"203.0.113.{number}"}
            assert_unauthenticated(await untrusted.post("/auth/login", json=login_body(f"f{number}@x.example"),
                                                        headers=forged))
        assert_too_many(await untrusted.post("/auth/login", json=login_body("f9@x.example"),
                                             headers={"X-Forwarded-For": "203.0.113.99"}))
        # through the trusted proxy, each client its own bucket ...
        for number in range(LIMIT + 2):
            forwarded = {"X-Forwarded-For": f"198.51.100.{number}"}
            assert_unauthenticated(await proxy.post("/auth/login", json=login_body(f"p{number}@x.example"),
                                                    headers=forwarded))
        # ... and one client behind it is still limited
        behind = {"X-Forwarded-For": "198.51.100.200"}
        for number in range(LIMIT):
            assert_unauthenticated(await proxy.post("/auth/login", json=login_body(f"q{number}@x.example"),
                                                    headers=behind))
        assert_too_many(await proxy.post("/auth/login", json=login_body("q9@x.example"), headers=behind))


def one_bcrypt(rounds: int) -> float:
    """Seconds one bcrypt hash at this cost takes on this machine now (the median of three)."""
    salt = bcrypt.gensalt(rounds)
    durations = []
    for _ in range(3):
        started = time.perf_counter()
        bcrypt.hashpw(b"calibrate", salt)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


async def test_logins_answer_during_a_registration_flood(processes: Processes) -> None:
    """At a real bcrypt cost, 50 registrations from 25 addresses (within their limit) queue for the process's two
    hashing slots; a login's check goes before them, so it answers in a few hashes' time, not the flood's."""
    rounds = 10
    env = {"BCRYPT_ROUNDS": str(rounds), "PASSWORD_HASH_CONCURRENCY": "2", "REGISTER_RATE_LIMIT_PER_MINUTE": "2"}
    with extra_api(processes, env) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as api:
            body = registration()
            assert (await api.post("/auth/register", json=body)).status_code == 201
            one_hash = one_bcrypt(rounds)
            flooders = [httpx.AsyncClient(base_url=url, timeout=120, transport=httpx.AsyncHTTPTransport(
                local_address=f"127.0.1.{number}")) for number in range(1, 26)]
            try:
                flood = [asyncio.create_task(flooder.post("/auth/register", json=registration()))
                         for flooder in flooders for _ in range(2)]
                await asyncio.sleep(2 * one_hash)  # the flood has arrived and waits to be hashed
                durations = []
                for _ in range(3):
                    # A connection of its own for each login: the registration's keep-alive connection may be closed
                    # by the server (its keep-alive timeout) just as a login is written to it, on a busy machine.
                    async with httpx.AsyncClient(base_url=url, timeout=120) as fresh:
                        started = time.perf_counter()
                        login = await fresh.post("/auth/login", json={"email": body["email"], "password": PASSWORD})
                        durations.append(time.perf_counter() - started)
                    assert login.status_code == 200, login.text
                still_flooding = sum(not task.done() for task in flood)
                answers = await asyncio.gather(*flood)
            finally:
                for flooder in flooders:
                    await flooder.aclose()
    assert [answer.status_code for answer in answers] == [201] * 50
    assert still_flooding > 0, (durations, one_hash)  # the logins did not simply wait for the flood to end
    # A login waits for one of the two slots to free, then checks: about two hashes. Queued behind the flood (as
    # before the slots) it waited for some 25 (7 s at cost 11). Measured against this machine's speed right now,
    # so a busy machine slows both sides alike.
    assert max(durations) < 10 * one_hash + 0.3, (durations, one_hash)


async def test_password_slots_let_a_waiting_check_in_first_and_survive_cancelled_waiters() -> None:
    """The order Passwords relies on: a login's check before every waiting hash; a waiter that gives up, even one
    handed the slot at that moment, does not keep the slot from the others."""
    slots = PrioritySlots(1)
    order: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        async with slots.held(urgent=urgent):
            order.append(name)

    async with slots.held(urgent=False):  # a hash is running
        hashes = [asyncio.create_task(take(f"hash {number}", urgent=False)) for number in range(3)]
        gave_up = asyncio.create_task(take("check that gave up", urgent=True))
        check = asyncio.create_task(take("check", urgent=True))
        await asyncio.sleep(0)
        gave_up.cancel()
    await asyncio.gather(*hashes, check)
    assert order == ["check", "hash 0", "hash 1", "hash 2"]

    async with slots.held(urgent=False):
        handed = asyncio.create_task(take("handed the slot, then cancelled", urgent=True))
        after = asyncio.create_task(take("after", urgent=False))
        await asyncio.sleep(0)
    handed.cancel()  # the slot is its already, but it has not run yet
    await asyncio.wait_for(after, 1)
    assert handed.cancelled() and order[-1] == "after"


def scratch_database(settings: Settings) -> tuple[Any, Any, pymysql.Connection]:
    """A database of one test's own at migration 0006: yoyo's backend, the migrations, and a connection."""
    scratch = settings.mysql.url(f"test_emails_{uuid.uuid4().hex[:8]}")
    address = Settings.from_env({"DATABASE_URL": scratch}).mysql
    server = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password)
    with server.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{address.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    server.close()
    backend = get_backend(scratch)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    backend.apply_migrations(backend.to_apply(migrations.filter(lambda migration: migration.id < "0007")))
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, autocommit=True, cursorclass=pymysql.cursors.DictCursor)
    return backend, migrations, conn


def email_collation(conn: pymysql.Connection) -> str:
    return rows(conn, "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                      " AND TABLE_NAME = 'users' AND COLUMN_NAME = 'email'")[0]["COLLATION_NAME"]


def add_users(conn: pymysql.Connection, *emails: str) -> None:
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO users (email, name, role, password_hash, created_at)"
                           " VALUES (%s, 'U', 'Patient', 'x', UTC_TIMESTAMP(6))", [(email,) for email in emails])


def test_migration_0007_normalizes_stored_emails_and_compares_them_exactly(settings: Settings) -> None:
    backend, migrations, conn = scratch_database(settings)
    exact = migrations.filter(lambda migration: migration.id.startswith("0007"))
    try:
        # as the old code stored them: trimmed and lower-cased only
        add_users(conn, "ａda@x.example", "straße@x.example", "plain@x.example", "ébé@x.example", "ﬁ@x.example")
        backend.apply_migrations(backend.to_apply(exact))
        assert email_collation(conn) == "utf8mb4_bin"
        assert [row["email"] for row in rows(conn, "SELECT email FROM users ORDER BY id")] == [
            "ada@x.example", "strasse@x.example", "plain@x.example", "ébé@x.example", "fi@x.example"]
        add_users(conn, "adá@x.example")  # another address now
        with pytest.raises(pymysql.err.IntegrityError):
            add_users(conn, "ada@x.example")

        # back to a collation that takes `ada` and `adá` for one: refused while they are two accounts
        with pytest.raises(RuntimeError, match="would share an email"):
            backend.rollback_migrations(backend.to_rollback(exact))
        assert email_collation(conn) == "utf8mb4_bin"
        with conn.cursor() as cursor:
            cursor.execute("DELETE FROM users WHERE email = 'adá@x.example'")
        backend.rollback_migrations(backend.to_rollback(exact))
        assert email_collation(conn) == "utf8mb4_unicode_ci"

        # two accounts the old collation kept apart but NFKC makes one: refused, nothing changed
        add_users(conn, "𝐚da@x.example")
        with pytest.raises(RuntimeError, match="sharing a normal form"):
            backend.apply_migrations(backend.to_apply(exact))
        assert email_collation(conn) == "utf8mb4_unicode_ci"
        assert "𝐚da@x.example" in {row["email"] for row in rows(conn, "SELECT email FROM users")}
    finally:
        backend.connection.close()  # it may hold a metadata lock the DROP would wait for
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{conn.db.decode()}`")
        conn.close()


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile", "docker-compose.yml"])
def test_every_way_of_starting_the_api_names_the_proxies_it_trusts(path: str) -> None:
    """uvicorn reads the client's address from X-Forwarded-For only when a proxy in FORWARDED_ALLOW_IPS sends it:
    `make run`, the image and compose pass it, 127.0.0.1 unless told (behind a load balancer, the balancer)."""
    text = (ROOT / path).read_text()
    assert re.search(r"FORWARDED_ALLOW_IPS\s*(\?=|=|:-)\s*127\.0\.0\.1\b", text), path
    assert path == "docker-compose.yml" or "--forwarded-allow-ips" in text


async def test_a_password_change_reaches_every_api_process_despite_the_user_cache(
    processes: Processes, factory: Factory, mysql: pymysql.Connection
) -> None:
    """With the user cache on (as in production), another process drops the old token at once, not in 60 s."""
    cached = {"AUTH_CACHE_SECONDS": "60"}
    with extra_api(processes, cached) as first_url, extra_api(processes, cached) as second_url:
        patient = await factory.patient()
        async with httpx.AsyncClient(base_url=first_url) as first, httpx.AsyncClient(base_url=second_url) as second:
            for api in (first, second):  # both processes now hold the user in their cache
                assert (await api.get("/auth/me", headers=patient.headers)).status_code == 200
            token = "a-reset-token-the-test-knows-0123456789abcdef"
            with mysql.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, created_at)"
                    " VALUES (%s, %s, UTC_TIMESTAMP(6) + INTERVAL 10 MINUTE, UTC_TIMESTAMP(6))",
                    (patient["id"], hashlib.sha256(token.encode()).hexdigest()))
            reset = await first.post("/auth/reset-password", json={"token": token, "new_password": "new secret 1"})
            assert reset.status_code == 204, reset.text
            assert_unauthenticated(await first.get("/auth/me", headers=patient.headers))
            deadline = time.monotonic() + 2  # pub/sub reaches the other process within milliseconds
            while (await second.get("/auth/me", headers=patient.headers)).status_code == 200:
                assert time.monotonic() < deadline, "the other API process still accepts the old token"
                await asyncio.sleep(0.02)


async def test_a_short_multibyte_password_counts_bytes(client: httpx.AsyncClient) -> None:
    # "éééé" is 4 characters but 8 bytes: bcrypt's rule is about bytes, so it is long enough.
    response = await client.post("/auth/register", json=registration(password="éééé"))
    assert response.status_code == 201, response.text
    assert_problem(await client.post("/auth/register", json=registration(password="ééé")), 400, "password")


async def test_a_token_verified_once_still_dies_at_its_expiry(
    client: httpx.AsyncClient, factory: Factory, settings: Settings
) -> None:
    """Each process remembers verified tokens to skip the signature check; expiry is still checked each time."""
    patient = await factory.patient()
    now = datetime.now(UTC)
    token = jwt.encode({"sub": str(patient["id"]), "role": "Patient", "ver": 0, "iat": now,
                        "exp": now + timedelta(seconds=1.5), "jti": uuid.uuid4().hex},
                       settings.jwt_secret, algorithm="HS256")
    for _ in range(3):  # verified, then served from the remembered tokens
        assert (await client.get("/auth/me", headers=bearer(token))).status_code == 200
    await asyncio.sleep(max(0.0, (now + timedelta(seconds=1.6) - datetime.now(UTC)).total_seconds()))
    assert_unauthenticated(await client.get("/auth/me", headers=bearer(token)))
