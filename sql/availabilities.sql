-- Intervals are half-open: [start, end) and [end, later) touch but do not overlap.

-- name: insert_availability
INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)
VALUES (%(doctor_id)s, %(start_time)s, %(end_time)s, %(created_at)s);

-- name: find_overlapping_availability
-- Windows are at most 24 hours: one that overlaps starts less than a day before this one, so the scan of the
-- (doctor_id, start_time) index covers one day, not the doctor's whole history.
SELECT id, start_time, end_time
FROM availabilities
WHERE doctor_id = %(doctor_id)s
  AND start_time < %(end_time)s AND start_time > %(start_time)s - INTERVAL 1 DAY AND end_time > %(start_time)s
ORDER BY start_time
LIMIT 1;

-- name: count_upcoming_windows
-- Windows not yet over (they started less than a day ago at the earliest), for the cap on a doctor's windows.
SELECT COUNT(*) FROM availabilities
WHERE doctor_id = %(doctor_id)s AND start_time > %(now)s - INTERVAL 1 DAY AND end_time > %(now)s;

-- name: find_availability
SELECT id, doctor_id, start_time, end_time FROM availabilities WHERE id = %(id)s;

-- name: delete_availability
DELETE FROM availabilities WHERE id = %(id)s;

-- name: find_held_appointment_in_window
-- Appointments that hold their time (held_start: confirmed, checked in, completed, no-show).
-- Appointments are at most 8 hours: the scan starts a day before the window, not at the doctor's first one.
SELECT id FROM appointments
WHERE doctor_id = %(doctor_id)s AND held_start IS NOT NULL
  AND start_time < %(end_time)s AND start_time > %(start_time)s - INTERVAL 1 DAY AND end_time > %(start_time)s
LIMIT 1;
