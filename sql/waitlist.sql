-- The waitlist: patients waiting for time with a doctor, offered freed time first come, first served by the
-- worker's refill (waitlist.py), under the doctor's row lock like every write to a doctor's schedule.

-- name: insert_waitlist_entry
INSERT INTO waitlist_entries (patient_id, doctor_id, appointment_type_id, duration_minutes, not_before, not_after,
                              auto_book, status, queued_at, created_at)
VALUES (%(patient_id)s, %(doctor_id)s, %(appointment_type_id)s, %(duration_minutes)s, %(not_before)s,
        %(not_after)s, %(auto_book)s, 'waiting', %(now)s, %(now)s);

-- name: count_open_waitlist_entries_of_patient
SELECT COUNT(*) FROM waitlist_entries WHERE patient_id = %(patient_id)s AND status IN ('waiting', 'offered');

-- name: find_waitlist_entry
-- Its patient sees it; its doctor and staff (`any`) too.
SELECT w.id, w.patient_id, w.doctor_id, w.appointment_type_id, w.duration_minutes, w.not_before, w.not_after,
       w.auto_book, w.status, w.hold_id, h.expires_at, w.appointment_id, w.queued_at, w.created_at, w.ended_at
FROM waitlist_entries w LEFT JOIN holds h ON h.id = w.hold_id
WHERE w.id = %(id)s AND (%(any)s OR w.patient_id = %(user_id)s OR w.doctor_id = %(user_id)s);

-- name: list_waitlist_entries
-- A patient's entries (newest first), or a doctor's line (in its order): exactly one of the two is given.
SELECT w.id, w.patient_id, w.doctor_id, w.appointment_type_id, w.duration_minutes, w.not_before, w.not_after,
       w.auto_book, w.status, w.hold_id, h.expires_at, w.appointment_id, w.queued_at, w.created_at, w.ended_at
FROM waitlist_entries w LEFT JOIN holds h ON h.id = w.hold_id
WHERE (%(patient_id)s IS NULL OR w.patient_id = %(patient_id)s)
  AND (%(doctor_id)s IS NULL OR w.doctor_id = %(doctor_id)s)
  AND (%(status)s IS NULL OR w.status = %(status)s)
ORDER BY CASE WHEN %(doctor_id)s IS NULL THEN w.id END DESC, w.queued_at, w.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_waitlist_entries
SELECT COUNT(*) FROM waitlist_entries w
WHERE (%(patient_id)s IS NULL OR w.patient_id = %(patient_id)s)
  AND (%(doctor_id)s IS NULL OR w.doctor_id = %(doctor_id)s)
  AND (%(status)s IS NULL OR w.status = %(status)s);

-- name: cancel_waitlist_entry
UPDATE waitlist_entries SET status = 'cancelled', ended_at = %(now)s
WHERE id = %(id)s AND status IN ('waiting', 'offered');

-- name: release_hold_of_entry
UPDATE holds SET status = 'released', ended_at = %(now)s WHERE id = %(hold_id)s AND status = 'held';

-- name: requeue_waitlist_entries
-- Offers let lapse or declined: back to the end of the line, not to be offered that slot again.
UPDATE waitlist_entries w JOIN holds h ON h.id = w.hold_id
SET w.status = 'waiting', w.queued_at = %(now)s, w.last_offered_start = h.start_time, w.hold_id = NULL
WHERE w.hold_id IN %(hold_ids)s AND w.status = 'offered';

-- name: expire_waitlist_entries_of_doctor
UPDATE waitlist_entries SET status = 'expired', ended_at = %(now)s
WHERE doctor_id = %(doctor_id)s AND status = 'waiting' AND not_after <= %(now)s;

-- name: waiting_entries_of_doctor
-- The line, first come first served.
SELECT id, patient_id, appointment_type_id, duration_minutes, not_before, not_after, auto_book, last_offered_start
FROM waitlist_entries
WHERE doctor_id = %(doctor_id)s AND status = 'waiting'
ORDER BY queued_at, id
LIMIT %(limit)s;

-- name: has_waiting_entries
SELECT EXISTS (SELECT 1 FROM waitlist_entries WHERE doctor_id = %(doctor_id)s AND status = 'waiting');

-- name: waitlist_work_of_doctor
-- What a refill of this doctor has to do, read without the lock: anyone waiting, waiting past their range, holds
-- past their expiry still marked held. Nothing when there is no such doctor.
SELECT u.timezone,
       EXISTS (SELECT 1 FROM waitlist_entries w WHERE w.doctor_id = u.id AND w.status = 'waiting') AS waiting,
       EXISTS (SELECT 1 FROM waitlist_entries w WHERE w.doctor_id = u.id AND w.status = 'waiting'
                                                  AND w.not_after <= %(now)s) AS ended,
       EXISTS (SELECT 1 FROM holds h WHERE h.doctor_id = u.id AND h.status = 'held'
                                       AND h.expires_at <= %(now)s) AS lapsed
FROM users u WHERE u.id = %(doctor_id)s AND u.role = 'Doctor';

-- name: doctors_with_waitlist_work
-- For the sweep: doctors with someone waiting, or with holds past their expiry still marked held.
SELECT doctor_id FROM waitlist_entries WHERE status = 'waiting'
UNION
SELECT doctor_id FROM holds WHERE status = 'held' AND expires_at <= %(now)s
LIMIT %(limit)s;

-- name: mark_waitlist_entry_offered
UPDATE waitlist_entries SET status = 'offered', hold_id = %(hold_id)s WHERE id = %(id)s AND status = 'waiting';

-- name: mark_waitlist_entry_booked
-- A confirmed hold that was a waitlist offer (`id`: the hold), or an entry booked directly (auto_book).
UPDATE waitlist_entries SET status = 'booked', appointment_id = %(appointment_id)s, ended_at = %(now)s
WHERE hold_id = %(id)s AND status = 'offered';

-- name: mark_waitlist_entry_auto_booked
UPDATE waitlist_entries SET status = 'booked', appointment_id = %(appointment_id)s, ended_at = %(now)s
WHERE id = %(id)s AND status = 'waiting';

-- name: insert_decided_booking_request
-- The booking request of an appointment the waitlist booked directly (auto_book): stored decided, as the
-- appointment's record of how it was made.
INSERT INTO booking_requests (kind, patient_id, doctor_id, appointment_type_id, start_time, end_time, status,
                              created_at, decided_at)
VALUES ('book', %(patient_id)s, %(doctor_id)s, %(appointment_type_id)s, %(start_time)s, %(end_time)s, 'confirmed',
        %(now)s, %(now)s);

-- name: link_booking_request_appointment
UPDATE booking_requests SET appointment_id = %(appointment_id)s WHERE id = %(id)s;

-- name: lock_doctor_zone
SELECT id, timezone FROM users WHERE id = %(doctor_id)s AND role = 'Doctor' FOR UPDATE;
