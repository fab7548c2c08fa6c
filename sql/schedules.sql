-- A doctor's time zone, weekly hours, time off and appointment types. Every write runs under lock_doctor.

-- name: list_schedule_in_range
-- Everything a schedule read needs, in one round trip: the doctor (time zone), the weekly hours, the one-off
-- windows touching [from, to), the time off overlapping it, and the appointments and live holds whose blocked span
-- (with buffers of at most 4 hours each side) can reach into it. A hold is live while held and not expired at
-- `now`, or while a confirm_hold request stored before it expired is pending (holds.py). Each scan is bounded by time on a (doctor_id, start_time)
-- index: windows last at most a day, time off at most 366 days, appointments 8 hours. The margins come computed
-- (schedule.read_bounds), clamped to the years 1-9999, where MySQL's own date arithmetic would give NULL. Numbers
-- are CAST: a UNION of unsigned columns with NULL comes back as DECIMAL from MariaDB.
SELECT 'doctor' AS kind, id, NULL AS start_time, NULL AS end_time, NULL AS a, NULL AS b, NULL AS c,
       timezone AS label
FROM users WHERE id = %(doctor_id)s AND role = 'Doctor'
UNION ALL
SELECT 'hours', id, NULL, NULL, CAST(weekday AS SIGNED), CAST(start_minute AS SIGNED), CAST(end_minute AS SIGNED), NULL
FROM weekly_hours WHERE doctor_id = %(doctor_id)s
UNION ALL
SELECT 'window', id, start_time, end_time, NULL, NULL, NULL, NULL
FROM availabilities
WHERE doctor_id = %(doctor_id)s
  AND start_time < %(to)s AND start_time > %(day_before)s AND end_time > %(from)s
UNION ALL
SELECT 'off', id, start_time, end_time, NULL, NULL, NULL, NULL
FROM time_off
WHERE doctor_id = %(doctor_id)s
  AND start_time < %(to)s AND start_time > %(year_before)s AND end_time > %(from)s
UNION ALL
SELECT 'busy', id, start_time, end_time, CAST(buffer_before_minutes AS SIGNED), CAST(buffer_after_minutes AS SIGNED),
       NULL, NULL
FROM appointments
WHERE doctor_id = %(doctor_id)s AND held_start IS NOT NULL
  AND start_time < %(day_after)s AND start_time > %(day_before)s
UNION ALL
SELECT 'held', id, start_time, end_time, CAST(buffer_before_minutes AS SIGNED), CAST(buffer_after_minutes AS SIGNED),
       NULL, NULL
FROM holds h
WHERE doctor_id = %(doctor_id)s AND status = 'held'
  AND start_time < %(day_after)s AND start_time > %(day_before)s
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'));

-- name: update_doctor_timezone
UPDATE users SET timezone = %(timezone)s WHERE id = %(id)s AND role = 'Doctor';

-- name: list_weekly_hours
SELECT weekday, start_minute, end_minute FROM weekly_hours
WHERE doctor_id = %(doctor_id)s
ORDER BY weekday, start_minute;

-- name: delete_weekly_hours
DELETE FROM weekly_hours WHERE doctor_id = %(doctor_id)s;

-- name: insert_weekly_hours
INSERT INTO weekly_hours (doctor_id, weekday, start_minute, end_minute)
VALUES (%(doctor_id)s, %(weekday)s, %(start_minute)s, %(end_minute)s);

-- name: insert_time_off
INSERT INTO time_off (doctor_id, start_time, end_time, reason, created_by, created_at)
VALUES (%(doctor_id)s, %(start_time)s, %(end_time)s, %(reason)s, %(created_by)s, %(now)s);

-- name: count_upcoming_time_off
SELECT COUNT(*) FROM time_off
WHERE doctor_id = %(doctor_id)s AND start_time > %(now)s - INTERVAL 366 DAY AND end_time > %(now)s;

-- name: list_time_off
-- Not yet over, soonest first.
SELECT id, doctor_id, start_time, end_time, reason, created_at FROM time_off
WHERE doctor_id = %(doctor_id)s AND start_time > %(now)s - INTERVAL 366 DAY AND end_time > %(now)s
ORDER BY start_time, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: find_time_off
SELECT id, doctor_id, start_time, end_time, reason, created_at FROM time_off WHERE id = %(id)s;

-- name: delete_time_off
DELETE FROM time_off WHERE id = %(id)s;

-- name: list_confirmed_appointments_between
-- Confirmed appointments of a doctor that overlap [from, to): those a time off would sweep away. Appointments last
-- at most 8 hours, so the scan starts a day before.
SELECT a.id, a.doctor_id, a.patient_id, p.name AS patient_name, a.appointment_type_id, a.booking_request_id,
       a.start_time, a.end_time
FROM appointments a JOIN users p ON p.id = a.patient_id
WHERE a.doctor_id = %(doctor_id)s AND a.status = 'confirmed'
  AND a.start_time < %(to)s AND a.start_time > %(from)s - INTERVAL 1 DAY AND a.end_time > %(from)s
ORDER BY a.start_time;

-- name: cancel_appointments_by_doctor
UPDATE appointments
SET status = 'cancelled', status_changed_at = %(now)s, cancelled_at = %(now)s, cancelled_by = %(user_id)s,
    cancel_reason = %(reason)s
WHERE id IN %(ids)s AND status = 'confirmed';

-- name: insert_appointment_type
INSERT INTO appointment_types (doctor_id, name, duration_minutes, buffer_before_minutes, buffer_after_minutes,
                               min_notice_minutes, max_days_ahead, cancel_notice_minutes, active, created_at,
                               updated_at)
VALUES (%(doctor_id)s, %(name)s, %(duration_minutes)s, %(buffer_before_minutes)s, %(buffer_after_minutes)s,
        %(min_notice_minutes)s, %(max_days_ahead)s, %(cancel_notice_minutes)s, TRUE, %(now)s, %(now)s);

-- name: count_active_appointment_types
SELECT COUNT(*) FROM appointment_types WHERE doctor_id = %(doctor_id)s AND active;

-- name: find_appointment_type
SELECT id, doctor_id, name, duration_minutes, buffer_before_minutes, buffer_after_minutes, min_notice_minutes,
       max_days_ahead, cancel_notice_minutes, active
FROM appointment_types WHERE id = %(id)s;

-- name: list_active_appointment_types
SELECT id, doctor_id, name, duration_minutes, buffer_before_minutes, buffer_after_minutes, min_notice_minutes,
       max_days_ahead, cancel_notice_minutes, active
FROM appointment_types WHERE doctor_id = %(doctor_id)s AND active
ORDER BY name, id;

-- name: update_appointment_type
UPDATE appointment_types
SET name = %(name)s, duration_minutes = %(duration_minutes)s, buffer_before_minutes = %(buffer_before_minutes)s,
    buffer_after_minutes = %(buffer_after_minutes)s, min_notice_minutes = %(min_notice_minutes)s,
    max_days_ahead = %(max_days_ahead)s, cancel_notice_minutes = %(cancel_notice_minutes)s, updated_at = %(now)s
WHERE id = %(id)s;

-- name: deactivate_appointment_type
UPDATE appointment_types SET active = FALSE, updated_at = %(now)s WHERE id = %(id)s;

-- name: insert_schedule_change
-- Append-only: no query updates or deletes schedule_changes.
INSERT INTO schedule_changes (doctor_id, actor_id, action, subject_id, changed_at)
VALUES (%(doctor_id)s, %(actor_id)s, %(action)s, %(subject_id)s, %(now)s);
