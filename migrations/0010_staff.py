"""The front desk: a Staff role, who asked for a booking made on a patient's behalf, and who changed a doctor's
schedule.

A Python migration for one reason: its rollback refuses, naming them, while staff accounts exist. Shrinking the
role ENUM under them would fail with a bare "Data truncated" (or, without strict mode, empty their role), and
deleting them would silently lose who did what.
"""

from __future__ import annotations

from typing import Any

from yoyo import step

__depends__ = {"0009_schedules"}

ROLES = "ALTER TABLE users MODIFY role ENUM({}) NOT NULL"

# Who changed a doctor's weekly hours, time off or appointment types, and when: one row per change, appended in
# the change's own transaction, under the doctor's row lock. Never updated or deleted. No foreign keys: the log
# outlives what it names (a withdrawn time off is deleted), and an FK check would take shared locks on users
# rows that booking workers hold exclusively (see 0003).
SCHEDULE_CHANGES = """
CREATE TABLE schedule_changes (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    actor_id BIGINT UNSIGNED NOT NULL,
    action ENUM('weekly_hours_replaced', 'time_off_added', 'time_off_withdrawn', 'appointment_type_created',
                'appointment_type_changed', 'appointment_type_deactivated') NOT NULL,
    -- The time off or appointment type changed; NULL for weekly hours, which are replaced as a whole.
    subject_id BIGINT UNSIGNED NULL,
    changed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_schedule_changes_doctor (doctor_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""


def refuse_while_staff_exist(conn: Any) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM users WHERE role = 'Staff' ORDER BY id")
        staff = [row[0] for row in cursor.fetchall()]
    if staff:
        raise RuntimeError(f"the Staff role cannot be rolled back while staff accounts exist {staff}; "
                           "delete or change them first, then roll back again")


steps = [
    step(ROLES.format("'Doctor', 'Patient', 'Staff'"), ROLES.format("'Doctor', 'Patient'")),
    # The acting user when it is not the patient: the staff member who booked on the patient's behalf.
    step("ALTER TABLE booking_requests ADD COLUMN requested_by BIGINT UNSIGNED NULL AFTER patient_id",
         "ALTER TABLE booking_requests DROP COLUMN requested_by"),
    step(SCHEDULE_CHANGES, "DROP TABLE schedule_changes"),
    # Last, so that a rollback (steps in reverse) refuses before it changes anything.
    step(lambda conn: None, refuse_while_staff_exist),
]
