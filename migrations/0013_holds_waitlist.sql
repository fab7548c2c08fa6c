-- depends: 0011_lifecycle
-- Slot holds and the waitlist. A hold keeps a doctor's time for one patient for a few minutes: made and confirmed
-- through the booking queue (booking requests of kind 'hold' and 'confirm_hold', decided in the doctor's batch),
-- or offered to a waitlist entry by the worker's refill. While live it blocks its span, buffers included, exactly
-- like an appointment. Every write runs under the doctor's row lock.

ALTER TABLE booking_requests
    MODIFY kind ENUM('book', 'reschedule', 'hold', 'confirm_hold') NOT NULL DEFAULT 'book',
    ADD COLUMN hold_id BIGINT UNSIGNED NULL AFTER reschedules,
    ADD KEY idx_booking_requests_hold (hold_id, status);

-- status: held (live until expires_at, or while a confirm_hold request stored before then is pending), confirmed
-- (appointment_id), released (its patient let it go), expired. No foreign keys to users, as booking_requests: the
-- worker holds the users rows' locks and an FK check would wait on them.
CREATE TABLE holds (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    patient_id BIGINT UNSIGNED NOT NULL,
    appointment_type_id BIGINT UNSIGNED NULL,
    start_time DATETIME(6) NOT NULL,
    end_time DATETIME(6) NOT NULL,
    buffer_before_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    buffer_after_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    notes VARCHAR(2000) NULL,
    status ENUM('held', 'confirmed', 'released', 'expired') NOT NULL DEFAULT 'held',
    expires_at DATETIME(6) NOT NULL,
    booking_request_id BIGINT UNSIGNED NULL,
    waitlist_entry_id BIGINT UNSIGNED NULL,
    appointment_id BIGINT UNSIGNED NULL,
    created_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_holds_booking_request (booking_request_id),
    KEY idx_holds_doctor_status_start (doctor_id, status, start_time),
    KEY idx_holds_patient_status (patient_id, status, start_time),
    KEY idx_holds_status_expires (status, expires_at),
    CONSTRAINT chk_holds_interval CHECK (end_time > start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A patient waiting for time with a doctor: an appointment inside [not_before, not_after] of a type's length or
-- of duration_minutes. queued_at orders the line (first come, first served); an offer let lapse or declined puts
-- the entry back at its end. last_offered_start: the slot it let go, not offered to it again.
CREATE TABLE waitlist_entries (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    patient_id BIGINT UNSIGNED NOT NULL,
    doctor_id BIGINT UNSIGNED NOT NULL,
    appointment_type_id BIGINT UNSIGNED NULL,
    duration_minutes SMALLINT UNSIGNED NOT NULL,
    not_before DATETIME(6) NOT NULL,
    not_after DATETIME(6) NOT NULL,
    auto_book BOOLEAN NOT NULL DEFAULT FALSE,
    status ENUM('waiting', 'offered', 'booked', 'expired', 'cancelled') NOT NULL DEFAULT 'waiting',
    hold_id BIGINT UNSIGNED NULL,
    appointment_id BIGINT UNSIGNED NULL,
    last_offered_start DATETIME(6) NULL,
    queued_at DATETIME(6) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    KEY idx_waitlist_doctor_status_queued (doctor_id, status, queued_at, id),
    KEY idx_waitlist_patient (patient_id, id),
    KEY idx_waitlist_status_not_after (status, not_after),
    CONSTRAINT chk_waitlist_range CHECK (not_after > not_before)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
