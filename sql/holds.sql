-- Slot holds: made and confirmed through the booking queue (booking.py), released by their patient, expired or
-- offered by the waitlist's refill (waitlist.py). Every write runs under the doctor's row lock. A hold is live while
-- `held` and before `expires_at`, or while a confirm_hold request for it is pending (stored before it expired):
-- the schedule queries (schedules.sql, booking_requests.sql, doctors.sql) count exactly those as busy.

-- name: insert_hold
INSERT INTO holds (doctor_id, patient_id, appointment_type_id, start_time, end_time, buffer_before_minutes,
                   buffer_after_minutes, notes, status, expires_at, booking_request_id, waitlist_entry_id, created_at)
VALUES (%(doctor_id)s, %(patient_id)s, %(appointment_type_id)s, %(start_time)s, %(end_time)s,
        %(buffer_before_minutes)s, %(buffer_after_minutes)s, %(notes)s, 'held', %(expires_at)s,
        %(booking_request_id)s, %(waitlist_entry_id)s, %(now)s);

-- name: confirm_hold_requests
UPDATE booking_requests br
JOIN holds h ON h.booking_request_id = br.id
SET br.status = 'confirmed', br.hold_id = h.id, br.reason = NULL, br.decided_at = %(now)s
WHERE br.id IN %(ids)s AND br.status = 'pending';

-- name: holds_of_requests
SELECT booking_request_id, id FROM holds WHERE booking_request_id IN %(ids)s;

-- name: find_holds_by_id
-- The holds a batch's confirmations name, read after the doctor's row lock: nobody changes them meanwhile.
SELECT id, patient_id, status, start_time, end_time, appointment_type_id, buffer_before_minutes,
       buffer_after_minutes, notes, waitlist_entry_id
FROM holds WHERE id IN %(ids)s AND doctor_id = %(doctor_id)s;

-- name: count_live_holds_of_patients
SELECT patient_id, COUNT(*) AS live FROM holds h
WHERE patient_id IN %(ids)s AND status = 'held'
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'))
GROUP BY patient_id;

-- name: mark_hold_confirmed
UPDATE holds SET status = 'confirmed', appointment_id = %(appointment_id)s, ended_at = %(now)s
WHERE id = %(id)s AND status = 'held';

-- name: find_hold_for_patient
-- The hold if it is this patient's, or for staff (`any`); anyone else: nothing, and a 404. With whether a
-- confirmation is pending.
SELECT h.id, h.doctor_id, h.patient_id, h.appointment_type_id, h.start_time, h.end_time, h.notes, h.status,
       h.expires_at, h.booking_request_id, h.waitlist_entry_id, h.appointment_id, h.created_at, h.ended_at,
       EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id AND br.status = 'pending')
           AS confirming
FROM holds h WHERE h.id = %(id)s AND (%(any)s OR h.patient_id = %(patient_id)s);

-- name: release_hold
UPDATE holds SET status = 'released', ended_at = %(now)s WHERE id = %(id)s AND status = 'held';

-- name: lapsed_holds_of_doctor
-- Holds still marked held that are no longer live: past their expiry, with no confirmation pending.
SELECT h.id, h.start_time, h.waitlist_entry_id FROM holds h
WHERE h.doctor_id = %(doctor_id)s AND h.status = 'held' AND h.expires_at <= %(now)s
  AND NOT EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id AND br.status = 'pending')
LIMIT %(limit)s;

-- name: expire_holds
UPDATE holds SET status = 'expired', ended_at = %(now)s WHERE id IN %(ids)s AND status = 'held';

-- name: count_live_holds_of_patient
SELECT COUNT(*) FROM holds h
WHERE patient_id = %(patient_id)s AND status = 'held'
  AND (expires_at > %(now)s OR EXISTS (SELECT 1 FROM booking_requests br WHERE br.hold_id = h.id
                                       AND br.status = 'pending'));
