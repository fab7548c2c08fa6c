DROP TABLE appointment_history;
ALTER TABLE appointment_types DROP COLUMN cancel_notice_minutes;
ALTER TABLE booking_requests DROP COLUMN reschedules, DROP COLUMN kind;
UPDATE appointments SET status = 'confirmed' WHERE status IN ('checked_in', 'completed', 'no_show');
UPDATE appointments SET status = 'cancelled' WHERE status = 'rescheduled';
ALTER TABLE appointments
    DROP INDEX uq_appointments_doctor_held_start,
    DROP INDEX uq_appointments_patient_held_start,
    DROP INDEX idx_appointments_patient_status,
    DROP COLUMN held_start,
    DROP COLUMN rescheduled_to,
    DROP COLUMN rescheduled_from,
    DROP COLUMN status_changed_at;
ALTER TABLE appointments
    MODIFY status ENUM('confirmed', 'cancelled') NOT NULL DEFAULT 'confirmed',
    ADD COLUMN confirmed_start DATETIME(6) GENERATED ALWAYS AS (CASE WHEN status = 'confirmed' THEN start_time END) STORED,
    ADD UNIQUE KEY uq_appointments_doctor_confirmed_start (doctor_id, confirmed_start),
    ADD UNIQUE KEY uq_appointments_patient_confirmed_start (patient_id, confirmed_start)
