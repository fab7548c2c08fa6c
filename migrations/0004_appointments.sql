-- depends: 0002_availabilities 0003_booking_requests
-- Confirmed (and later cancelled) appointments. The worker writes them under the doctor's row lock; the
-- unique keys below are a last line of defence that no code path can get around.
CREATE TABLE appointments (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    booking_request_id BIGINT UNSIGNED NOT NULL,
    doctor_id BIGINT UNSIGNED NOT NULL,
    patient_id BIGINT UNSIGNED NOT NULL,
    start_time DATETIME(6) NOT NULL,
    end_time DATETIME(6) NOT NULL,
    notes VARCHAR(2000) NULL,
    status ENUM('confirmed', 'cancelled') NOT NULL DEFAULT 'confirmed',
    created_at DATETIME(6) NOT NULL,
    cancelled_at DATETIME(6) NULL,
    cancelled_by BIGINT UNSIGNED NULL,
    cancel_reason VARCHAR(500) NULL,
    -- NULL once cancelled, so a freed slot can be booked again while two confirmed ones cannot share a start.
    confirmed_start DATETIME(6) GENERATED ALWAYS AS (CASE WHEN status = 'confirmed' THEN start_time END) STORED,
    PRIMARY KEY (id),
    UNIQUE KEY uq_appointments_booking_request (booking_request_id),
    UNIQUE KEY uq_appointments_doctor_confirmed_start (doctor_id, confirmed_start),
    UNIQUE KEY uq_appointments_patient_confirmed_start (patient_id, confirmed_start),
    KEY idx_appointments_doctor_start (doctor_id, start_time),
    KEY idx_appointments_patient_start (patient_id, start_time),
    CONSTRAINT fk_appointments_booking_request FOREIGN KEY (booking_request_id)
        REFERENCES booking_requests (id) ON DELETE CASCADE,
    CONSTRAINT fk_appointments_doctor FOREIGN KEY (doctor_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT fk_appointments_patient FOREIGN KEY (patient_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT chk_appointments_interval CHECK (end_time > start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
