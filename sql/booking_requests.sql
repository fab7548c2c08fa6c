-- name: insert_booking_request
-- Inserts nothing when there is no such doctor: the existence check and the insert are one round trip.
-- Under READ COMMITTED the SELECT is a consistent read, so it never waits on a worker's lock of that row.
INSERT INTO booking_requests
    (kind, reschedules, hold_id, patient_id, requested_by, doctor_id, appointment_type_id, start_time, end_time,
     notes, idempotency_key, request_fingerprint, created_at)
SELECT %(kind)s, %(reschedules)s, %(hold_id)s, %(patient_id)s, %(requested_by)s, id, %(appointment_type_id)s,
       %(start_time)s, %(end_time)s, %(notes)s, %(idempotency_key)s, %(fingerprint)s, %(created_at)s
FROM users WHERE id = %(doctor_id)s AND role = 'Doctor';

-- name: find_booking_request_by_idempotency_key
SELECT id, request_fingerprint FROM booking_requests
WHERE patient_id = %(patient_id)s AND idempotency_key = %(idempotency_key)s;

-- name: find_booking_request_for_user
-- Its patient's, and the staff member's who asked for it on the patient's behalf.
SELECT id, kind, reschedules, hold_id, patient_id, requested_by, doctor_id, appointment_type_id, start_time,
       end_time, notes, status, reason, appointment_id, created_at, decided_at
FROM booking_requests WHERE id = %(id)s AND (patient_id = %(user_id)s OR requested_by = %(user_id)s);

-- name: list_booking_requests_for_patient
SELECT id, kind, reschedules, hold_id, patient_id, requested_by, doctor_id, appointment_type_id, start_time,
       end_time, notes, status, reason, appointment_id, created_at, decided_at
FROM booking_requests
WHERE patient_id = %(patient_id)s AND (%(status)s IS NULL OR status = %(status)s)
ORDER BY id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_booking_requests_for_patient
SELECT COUNT(*) FROM booking_requests
WHERE patient_id = %(patient_id)s AND (%(status)s IS NULL OR status = %(status)s);

-- name: lock_pending_requests_of_doctor
-- Oldest first, so a contested slot goes to whoever asked first; each with the rules of its appointment type if
-- that is one of the doctor's active ones (`type_id` NULL otherwise). Read in the order of the (doctor, status, id)
-- index, so the scan stops at the limit and locks only the rows returned, however many are pending (without the
-- hint, MariaDB may scan every pending request of every doctor through the (status, created_at) index and sort).
SELECT br.id, br.patient_id, br.appointment_type_id, br.start_time, br.end_time, br.notes, br.reschedules, br.kind,
       br.hold_id, br.requested_by, br.created_at, br.requested_in_history,
       t.id AS type_id, t.buffer_before_minutes, t.buffer_after_minutes, t.min_notice_minutes, t.max_days_ahead
FROM booking_requests br FORCE INDEX (idx_booking_requests_doctor_pending)
LEFT JOIN appointment_types t ON t.id = br.appointment_type_id AND t.doctor_id = br.doctor_id AND t.active
WHERE br.doctor_id = %(doctor_id)s AND br.status = 'pending'
ORDER BY br.id
LIMIT %(limit)s
FOR UPDATE;

-- name: lock_users
-- Patients (or other doctors of a batch's reschedules), in ascending id order, so two workers locking overlapping
-- sets cannot deadlock on each other.
SELECT id FROM users WHERE id IN %(ids)s ORDER BY id FOR UPDATE;

-- name: doctors_of_appointments
-- A plain read: an appointment's doctor never changes, so which rows to lock can be known before locking them.
SELECT id, doctor_id FROM appointments WHERE id IN %(ids)s;

-- name: find_appointments_by_id
-- After their doctors' row locks: nobody can change them until this transaction ends.
SELECT id, doctor_id, patient_id, status, start_time, end_time FROM appointments WHERE id IN %(ids)s;

-- name: mark_appointments_rescheduled
UPDATE appointments SET status = 'rescheduled', status_changed_at = %(now)s
WHERE id IN %(ids)s AND status = 'confirmed';

-- name: link_rescheduled_appointment
-- By primary key: the moved appointment's id is known, so no other appointment is read or locked (a join on
-- rescheduled_from once took shared locks on rows a cancellation held, which deadlocked with it).
UPDATE appointments SET rescheduled_to = %(moved_to)s WHERE id = %(id)s;

-- name: list_schedules_between
-- Everything a decision reads, for the doctors of a group and their ranges, in one statement (a few for many:
-- booking.schedule_reads): each doctor's weekly hours; in each range (`ranges`: one {any …} term a range, so each
-- is an interval of a (…, start_time) index, bounded by time with the margins of range_bounds) the doctor's windows,
-- time off, appointments holding their time and live holds (as list_schedule_in_range), and the appointments and
-- live holds of the patients asking in it (with any doctor). A row that two ranges' margins reach comes once (the
-- OR); read by two statements of a group (booking.schedule_reads), twice, which the decision's merging of spans
-- makes harmless.
-- Numbers are CAST: a UNION of unsigned columns with NULL comes back as DECIMAL from MariaDB.
SELECT 'hours' AS kind, id, CAST(doctor_id AS SIGNED) AS doctor_id, NULL AS patient_id, NULL AS start_time,
       NULL AS end_time, CAST(weekday AS SIGNED) AS a, CAST(start_minute AS SIGNED) AS b,
       CAST(end_minute AS SIGNED) AS c
FROM weekly_hours WHERE doctor_id IN %(doctor_ids)s
UNION ALL
SELECT 'window', id, CAST(doctor_id AS SIGNED), NULL, start_time, end_time, NULL, NULL, NULL FROM availabilities
WHERE {any ranges: doctor_id = %(doctor_id)s
                   AND start_time < %(to)s AND start_time > %(day_before)s AND end_time > %(from)s}
UNION ALL
SELECT 'off', id, CAST(doctor_id AS SIGNED), NULL, start_time, end_time, NULL, NULL, NULL FROM time_off
WHERE {any ranges: doctor_id = %(doctor_id)s
                   AND start_time < %(to)s AND start_time > %(year_before)s AND end_time > %(from)s}
UNION ALL
SELECT 'busy', id, CAST(doctor_id AS SIGNED), NULL, start_time, end_time, CAST(buffer_before_minutes AS SIGNED),
       CAST(buffer_after_minutes AS SIGNED), NULL FROM appointments
WHERE held_start IS NOT NULL
  AND {any ranges: doctor_id = %(doctor_id)s AND start_time < %(day_after)s AND start_time > %(day_before)s}
UNION ALL
SELECT 'held', id, CAST(doctor_id AS SIGNED), NULL, start_time, end_time, CAST(buffer_before_minutes AS SIGNED),
       CAST(buffer_after_minutes AS SIGNED), NULL FROM holds h
WHERE status = 'held'
  AND {any ranges: doctor_id = %(doctor_id)s AND start_time < %(day_after)s AND start_time > %(day_before)s}
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'))
UNION ALL
SELECT 'patient', id, NULL, CAST(patient_id AS SIGNED), start_time, end_time, NULL, NULL, NULL FROM appointments
WHERE held_start IS NOT NULL
  AND {any ranges: patient_id IN %(patient_ids)s
                   AND start_time < %(to)s AND start_time > %(day_before)s AND end_time > %(from)s}
UNION ALL
SELECT 'patient_hold', id, NULL, CAST(patient_id AS SIGNED), start_time, end_time, NULL, NULL, NULL FROM holds h
WHERE status = 'held'
  AND {any ranges: patient_id IN %(patient_ids)s
                   AND start_time < %(to)s AND start_time > %(day_before)s AND end_time > %(from)s}
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'));

-- name: insert_appointment
INSERT INTO appointments (booking_request_id, rescheduled_from, doctor_id, patient_id, appointment_type_id,
                          start_time, end_time, buffer_before_minutes, buffer_after_minutes, notes, created_at)
VALUES (%(booking_request_id)s, %(rescheduled_from)s, %(doctor_id)s, %(patient_id)s, %(appointment_type_id)s,
        %(start_time)s, %(end_time)s, %(buffer_before_minutes)s, %(buffer_after_minutes)s, %(notes)s, %(now)s);

-- name: confirm_booking_requests
UPDATE booking_requests br
JOIN appointments a ON a.booking_request_id = br.id
SET br.status = 'confirmed', br.appointment_id = a.id, br.reason = NULL, br.decided_at = %(now)s
WHERE br.id IN %(ids)s AND br.status = 'pending';

-- name: appointments_of_requests
SELECT booking_request_id, id FROM appointments WHERE booking_request_id IN %(ids)s;

-- name: reject_booking_requests
UPDATE booking_requests SET status = 'rejected', reason = %(reason)s, decided_at = %(now)s
WHERE id IN %(ids)s AND status = 'pending';

-- name: lock_booking_request
SELECT id, doctor_id, patient_id, requested_by, created_at, requested_in_history, status, reschedules
FROM booking_requests
WHERE id = %(id)s FOR UPDATE;

-- name: mark_booking_request_failed
UPDATE booking_requests SET status = 'failed', reason = %(reason)s, decided_at = %(now)s
WHERE id = %(id)s AND status = 'pending';

-- name: list_stale_pending_requests
SELECT id, doctor_id FROM booking_requests
WHERE status = 'pending' AND created_at < %(before)s
ORDER BY id
LIMIT %(limit)s;

-- name: count_stale_pending_requests
-- For /metrics: one range of idx_booking_requests_status_created, however many requests there are.
SELECT COUNT(*) FROM booking_requests
WHERE status = 'pending' AND created_at < %(before)s;
