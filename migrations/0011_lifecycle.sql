-- depends: 0009_schedules
-- The appointment lifecycle: clinical statuses, atomic reschedule (a booking request of kind 'reschedule' that
-- moves an appointment), a per-type cancellation notice, and an append-only history of every change.

-- Checked-in, completed and no-show appointments still hold their time; cancelled and rescheduled ones free it.
-- The unique keys on the generated start are rebuilt for the new meaning of "holds its time".
ALTER TABLE appointments
    DROP INDEX uq_appointments_doctor_confirmed_start,
    DROP INDEX uq_appointments_patient_confirmed_start,
    DROP COLUMN confirmed_start;
ALTER TABLE appointments
    MODIFY status ENUM('confirmed', 'checked_in', 'completed', 'no_show', 'cancelled', 'rescheduled')
        NOT NULL DEFAULT 'confirmed',
    ADD COLUMN status_changed_at DATETIME(6) NULL AFTER status,
    ADD COLUMN rescheduled_from BIGINT UNSIGNED NULL AFTER booking_request_id,
    ADD COLUMN rescheduled_to BIGINT UNSIGNED NULL AFTER rescheduled_from,
    ADD COLUMN held_start DATETIME(6) GENERATED ALWAYS AS
        (CASE WHEN status IN ('confirmed', 'checked_in', 'completed', 'no_show') THEN start_time END) STORED,
    ADD UNIQUE KEY uq_appointments_doctor_held_start (doctor_id, held_start),
    ADD UNIQUE KEY uq_appointments_patient_held_start (patient_id, held_start),
    ADD KEY idx_appointments_patient_status (patient_id, status);

-- A reschedule is a booking request that names the appointment it moves; decided by the worker like a booking.
ALTER TABLE booking_requests
    ADD COLUMN kind ENUM('book', 'reschedule') NOT NULL DEFAULT 'book' AFTER id,
    ADD COLUMN reschedules BIGINT UNSIGNED NULL AFTER kind;

-- How long before its start a patient may still cancel or move an appointment of this type (NULL: the
-- CANCEL_NOTICE_MINUTES setting).
ALTER TABLE appointment_types ADD COLUMN cancel_notice_minutes INT UNSIGNED NULL AFTER max_days_ahead;

-- Append-only: rows are inserted in the transaction of the change they record, never updated or deleted (a test
-- reads every SQL file to keep it so). No foreign keys: the record outlives what it describes.
CREATE TABLE appointment_history (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    appointment_id BIGINT UNSIGNED NULL,
    booking_request_id BIGINT UNSIGNED NULL,
    at DATETIME(6) NOT NULL,
    actor_id BIGINT UNSIGNED NULL,
    actor_role VARCHAR(16) NOT NULL,
    action VARCHAR(32) NOT NULL,
    from_status VARCHAR(16) NULL,
    to_status VARCHAR(16) NULL,
    reason VARCHAR(500) NULL,
    PRIMARY KEY (id),
    KEY idx_appointment_history_appointment (appointment_id, id),
    KEY idx_appointment_history_request (booking_request_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
