-- name: find_appointment_for_user
-- Visible to its patient and its doctor only; anyone else gets nothing (and a 404). So the patient's email, which
-- the doctor needs to reach them, goes to no one else.
SELECT a.id, a.booking_request_id, a.doctor_id, d.name AS doctor_name, a.patient_id, p.name AS patient_name,
       p.email AS patient_email, a.appointment_type_id, a.start_time, a.end_time, a.notes, a.status, a.created_at,
       a.cancelled_at, a.cancelled_by, a.cancel_reason
FROM appointments a
JOIN users d ON d.id = a.doctor_id
JOIN users p ON p.id = a.patient_id
WHERE a.id = %(id)s AND (a.patient_id = %(user_id)s OR a.doctor_id = %(user_id)s);

-- name: list_appointments_for_user
-- Exactly one of doctor_id / patient_id is given; the server folds the other test away and uses its index.
SELECT a.id, a.booking_request_id, a.doctor_id, d.name AS doctor_name, a.patient_id, p.name AS patient_name,
       p.email AS patient_email, a.appointment_type_id, a.start_time, a.end_time, a.notes, a.status, a.created_at,
       a.cancelled_at, a.cancelled_by, a.cancel_reason
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
SET status = 'cancelled', cancelled_at = %(now)s, cancelled_by = %(user_id)s, cancel_reason = %(reason)s
WHERE id = %(id)s AND status = 'confirmed';
