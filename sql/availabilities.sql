-- Intervals are half-open: [start, end) and [end, later) touch but do not overlap.

-- name: insert_availability
INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)
VALUES (%(doctor_id)s, %(start_time)s, %(end_time)s, %(created_at)s);

-- name: find_overlapping_availability
SELECT id, start_time, end_time
FROM availabilities
WHERE doctor_id = %(doctor_id)s AND start_time < %(end_time)s AND end_time > %(start_time)s
ORDER BY start_time
LIMIT 1;

-- name: find_availability
SELECT id, doctor_id, start_time, end_time FROM availabilities WHERE id = %(id)s;

-- name: delete_availability
DELETE FROM availabilities WHERE id = %(id)s;

-- name: list_windows_and_busy_in_range
-- One round trip for the hottest read: the doctor's windows touching [from, to), then the confirmed
-- appointments that could lie inside them. Windows are at most 24 hours and appointments at most 8, so the
-- start-time bounds keep both scans on the (doctor_id, start_time) indexes.
SELECT 'window' AS kind, id, doctor_id, start_time, end_time
FROM availabilities
WHERE doctor_id = %(doctor_id)s
  AND start_time < %(to)s AND start_time > %(from)s - INTERVAL 1 DAY AND end_time > %(from)s
UNION ALL
SELECT 'busy', id, doctor_id, start_time, end_time
FROM appointments
WHERE doctor_id = %(doctor_id)s AND status = 'confirmed'
  AND start_time < %(to)s AND start_time > %(from)s - INTERVAL 2 DAY AND end_time > %(from)s - INTERVAL 1 DAY
ORDER BY start_time;

-- name: find_confirmed_appointment_in_window
SELECT id FROM appointments
WHERE doctor_id = %(doctor_id)s AND status = 'confirmed'
  AND start_time < %(end_time)s AND end_time > %(start_time)s
LIMIT 1;
