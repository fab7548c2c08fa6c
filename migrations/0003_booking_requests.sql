-- depends: 0001_users
-- The durable record of every POST /appointments: written before the 202, decided by a worker.
-- No foreign keys on purpose: an FK check takes a shared lock on the users rows that the booking worker holds
-- exclusively, which stalls (and deadlocks) the API's inserts behind every decision. The API checks the doctor
-- exists; the worker rejects a request whose doctor is gone with `doctor_not_found`.
CREATE TABLE booking_requests (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    patient_id BIGINT UNSIGNED NOT NULL,
    doctor_id BIGINT UNSIGNED NOT NULL,
    start_time DATETIME(6) NOT NULL,
    end_time DATETIME(6) NOT NULL,
    notes VARCHAR(2000) NULL,
    status ENUM('pending', 'confirmed', 'rejected', 'failed') NOT NULL DEFAULT 'pending',
    reason VARCHAR(64) NULL,
    appointment_id BIGINT UNSIGNED NULL,
    idempotency_key VARCHAR(255) NULL,
    -- Fingerprint of the body sent with the idempotency key, to refuse the same key with another body.
    request_fingerprint CHAR(64) NULL,
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    decided_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_booking_requests_idempotency (patient_id, idempotency_key),
    KEY idx_booking_requests_patient (patient_id, id),
    KEY idx_booking_requests_doctor_pending (doctor_id, status, id),
    KEY idx_booking_requests_status_created (status, created_at),
    CONSTRAINT chk_booking_requests_interval CHECK (end_time > start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
