"""users.email compared exactly (utf8mb4_bin), each stored email in its normal form (NFKC, case-folded).

utf8mb4_unicode_ci let `adá@x`, `ádá@x` and `ａda@x` all find one account, while the rate limits counted each
spelling on its own. Now the service folds an email once (service.core.accounts.normal_email) and the column
compares what it is given exactly: one spelling, one account.

A Python migration, because MySQL has no NFKC. It refuses, naming the accounts, if two of them share a normal form
(the old collation kept e.g. `𝐚da@x` and `ada@x` apart) or one's is too long: someone must decide which keeps the
address. The rollback likewise refuses while two accounts differ only in what utf8mb4_unicode_ci ignores (`ada@x`
and `ádá@x`, both allowed now). Runs on MySQL 8.0 and MariaDB 10.11.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from yoyo import step

from service.core.accounts import MAX_EMAIL_CHARS, normal_email

__depends__ = {"0006_drop_booking_request_attempts"}

COLUMN = "ALTER TABLE users MODIFY email VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {} NOT NULL"


def normal_forms(conn: Any) -> list[tuple[str, int]]:
    """(normal form, id) of every stored email not in it yet; refuses if that would merge or overflow accounts."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT id, email FROM users ORDER BY id")
        stored = cursor.fetchall()
    owners: dict[str, list[int]] = defaultdict(list)
    for user_id, email in stored:
        owners[normal_email(email)].append(user_id)
    shared = [ids for ids in owners.values() if len(ids) > 1]
    too_long = [ids[0] for normal, ids in owners.items() if len(normal) > MAX_EMAIL_CHARS]
    if shared or too_long:
        raise RuntimeError(f"users.email cannot be normalized: accounts sharing a normal form {shared}, "
                           f"too long once normalized {too_long}; change those emails, then migrate again")
    return [(normal, user_id) for user_id, email in stored if (normal := normal_email(email)) != email]


def compare_exactly(conn: Any) -> None:
    # pymysql decodes with the connection's charset: anything but utf8mb4 would read astral characters as `?`.
    conn.set_character_set("utf8mb4")
    normal_forms(conn)  # refuse before changing anything
    with conn.cursor() as cursor:
        cursor.execute(COLUMN.format("utf8mb4_bin"))


def normalize(conn: Any) -> None:
    # After the column compares exactly: a normal form may equal another account's email under the old collation
    # (`𝐚dá@x` becomes `adá@x`, beside `ada@x`), which two rows could not share while it was in force.
    with conn.cursor() as cursor:
        cursor.executemany("UPDATE users SET email = %s WHERE id = %s", normal_forms(conn))


def compare_ignoring_case_and_accents(conn: Any) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT GROUP_CONCAT(id ORDER BY id) FROM users"
                       " GROUP BY email COLLATE utf8mb4_unicode_ci HAVING COUNT(*) > 1")
        alike = [row[0] for row in cursor.fetchall()]
        if alike:
            raise RuntimeError(f"users.email cannot ignore case and accents again: these accounts would share an "
                               f"email {alike}; change those emails, then roll back again")
        cursor.execute(COLUMN.format("utf8mb4_unicode_ci"))


steps = [step(compare_exactly, compare_ignoring_case_and_accents), step(normalize, None)]
