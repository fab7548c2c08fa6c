-- name: list_doctors
-- The directory's filters: part of the name, a specialty, and an active appointment type of that name.
SELECT id, name, specialty, timezone, created_at
FROM users u
WHERE role = 'Doctor'
  AND (%(name_like)s IS NULL OR name LIKE %(name_like)s)
  AND (%(specialty)s IS NULL OR specialty = %(specialty)s)
  AND (%(type_name)s IS NULL OR EXISTS (
      SELECT 1 FROM appointment_types t WHERE t.doctor_id = u.id AND t.active AND t.name = %(type_name)s))
ORDER BY name, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_doctors
SELECT COUNT(*)
FROM users u
WHERE role = 'Doctor'
  AND (%(name_like)s IS NULL OR name LIKE %(name_like)s)
  AND (%(specialty)s IS NULL OR specialty = %(specialty)s)
  AND (%(type_name)s IS NULL OR EXISTS (
      SELECT 1 FROM appointment_types t WHERE t.doctor_id = u.id AND t.active AND t.name = %(type_name)s));

-- name: list_active_types_named
-- Each listed doctor's active type of that name (the lowest id, if a doctor has two).
SELECT id, doctor_id, name, duration_minutes, buffer_before_minutes, buffer_after_minutes, min_notice_minutes,
       max_days_ahead, cancel_notice_minutes, active
FROM appointment_types
WHERE doctor_id IN %(doctor_ids)s AND active AND name = %(type_name)s
ORDER BY id;

-- name: list_schedules_of_doctors
-- list_schedule_in_range for many doctors at once (the directory's next free slot): one round trip whatever their
-- number, each scan a range of a (doctor_id, start_time) index per doctor. A live hold's `c` is the seconds until it
-- lapses (the directory's cache keeps what it read no longer).
SELECT 'hours' AS kind, doctor_id, id, NULL AS start_time, NULL AS end_time, CAST(weekday AS SIGNED) AS a,
       CAST(start_minute AS SIGNED) AS b, CAST(end_minute AS SIGNED) AS c
FROM weekly_hours WHERE doctor_id IN %(doctor_ids)s
UNION ALL
SELECT 'window', doctor_id, id, start_time, end_time, NULL, NULL, NULL
FROM availabilities
WHERE doctor_id IN %(doctor_ids)s AND start_time < %(to)s AND start_time > %(day_before)s AND end_time > %(from)s
UNION ALL
SELECT 'off', doctor_id, id, start_time, end_time, NULL, NULL, NULL
FROM time_off
WHERE doctor_id IN %(doctor_ids)s AND start_time < %(to)s AND start_time > %(year_before)s AND end_time > %(from)s
UNION ALL
SELECT 'busy', doctor_id, id, start_time, end_time, CAST(buffer_before_minutes AS SIGNED),
       CAST(buffer_after_minutes AS SIGNED), NULL
FROM appointments
WHERE doctor_id IN %(doctor_ids)s AND held_start IS NOT NULL
  AND start_time < %(day_after)s AND start_time > %(day_before)s
UNION ALL
SELECT 'held', doctor_id, id, start_time, end_time, CAST(buffer_before_minutes AS SIGNED),
       CAST(buffer_after_minutes AS SIGNED), CAST(TIMESTAMPDIFF(SECOND, %(now)s, expires_at) AS SIGNED)
FROM holds h
WHERE doctor_id IN %(doctor_ids)s AND status = 'held'
  AND start_time < %(day_after)s AND start_time > %(day_before)s
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'));

-- name: find_doctor
SELECT id, name, specialty, timezone, created_at
FROM users WHERE id = %(id)s AND role = 'Doctor';

-- name: update_doctor_specialty
UPDATE users SET specialty = %(specialty)s WHERE id = %(id)s AND role = 'Doctor';
