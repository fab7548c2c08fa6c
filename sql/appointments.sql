-- name: find_appointment_for_user
-- Visible to its patient, its doctor, and staff (`any`); anyone else gets nothing (and a 404). So the patient's
-- email, which the doctor needs to reach them, goes to no one else. With its type's cancellation notice.
SELECT a.id, a.booking_request_id, a.doctor_id, d.name AS doctor_name, a.patient_id, p.name AS patient_name,
       p.email AS patient_email, a.appointment_type_id, a.start_time, a.end_time, a.notes, a.status,
       a.status_changed_at, a.rescheduled_from, a.rescheduled_to, a.created_at, a.cancelled_at, a.cancelled_by,
       a.cancel_reason, t.cancel_notice_minutes AS type_cancel_notice_minutes, t.active AS type_active
FROM appointments a
JOIN users d ON d.id = a.doctor_id
JOIN users p ON p.id = a.patient_id
LEFT JOIN appointment_types t ON t.id = a.appointment_type_id
WHERE a.id = %(id)s AND (%(any)s OR a.patient_id = %(user_id)s OR a.doctor_id = %(user_id)s);

-- name: list_appointments_for_user
-- Exactly one of doctor_id / patient_id is given; the server folds the other test away and uses its index. A
-- doctor's schedule says how often each patient did not come (one index range per row listed, at most 200).
SELECT a.id, a.booking_request_id, a.doctor_id, d.name AS doctor_name, a.patient_id, p.name AS patient_name,
       p.email AS patient_email, a.appointment_type_id, a.start_time, a.end_time, a.notes, a.status,
       a.status_changed_at, a.rescheduled_from, a.rescheduled_to, a.created_at, a.cancelled_at, a.cancelled_by,
       a.cancel_reason,
       CASE WHEN %(doctor_id)s IS NOT NULL THEN
           (SELECT COUNT(*) FROM appointments n WHERE n.patient_id = a.patient_id AND n.status = 'no_show')
       END AS patient_no_shows
FROM appointments a
JOIN users d ON d.id = a.doctor_id
JOIN users p ON p.id = a.patient_id
WHERE (%(doctor_id)s IS NULL OR a.doctor_id = %(doctor_id)s)
  AND (%(patient_id)s IS NULL OR a.patient_id = %(patient_id)s)
  AND (%(status)s IS NULL OR a.status = %(status)s)
  AND (%(from)s IS NULL OR a.end_time > %(from)s)
  AND (%(to)s IS NULL OR a.start_time < %(to)s)
ORDER BY a.start_time, a.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_appointments_for_user
SELECT COUNT(*)
FROM appointments a
WHERE (%(doctor_id)s IS NULL OR a.doctor_id = %(doctor_id)s)
  AND (%(patient_id)s IS NULL OR a.patient_id = %(patient_id)s)
  AND (%(status)s IS NULL OR a.status = %(status)s)
  AND (%(from)s IS NULL OR a.end_time > %(from)s)
  AND (%(to)s IS NULL OR a.start_time < %(to)s);

-- name: cancel_appointment
UPDATE appointments
SET status = 'cancelled', status_changed_at = %(now)s, cancelled_at = %(now)s, cancelled_by = %(user_id)s,
    cancel_reason = %(reason)s
WHERE id = %(id)s AND status = 'confirmed';

-- name: change_appointment_status
-- Only from the status the caller saw under the doctor's lock.
UPDATE appointments SET status = %(to_status)s, status_changed_at = %(now)s
WHERE id = %(id)s AND status = %(from_status)s;
