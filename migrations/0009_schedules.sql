-- depends: 0006_drop_booking_request_attempts
-- Clinic schedules: a doctor's time zone, weekly hours in it, time off, appointment types (length, buffers,
-- notice, horizon). Every write to these takes the doctor's row lock, as bookings do.

ALTER TABLE users ADD COLUMN timezone VARCHAR(64) NOT NULL DEFAULT 'UTC' AFTER specialty;

-- Recurring hours on the doctor's local wall clock: ISO weekday (1 Monday … 7 Sunday), minutes after local
-- midnight, half-open [start_minute, end_minute); 1440 is the midnight that ends the day.
CREATE TABLE weekly_hours (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    weekday TINYINT UNSIGNED NOT NULL,
    start_minute SMALLINT UNSIGNED NOT NULL,
    end_minute SMALLINT UNSIGNED NOT NULL,
    PRIMARY KEY (id),
    KEY idx_weekly_hours_doctor (doctor_id, weekday, start_minute),
    CONSTRAINT fk_weekly_hours_doctor FOREIGN KEY (doctor_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT chk_weekly_hours_weekday CHECK (weekday BETWEEN 1 AND 7),
    CONSTRAINT chk_weekly_hours_interval CHECK (start_minute < end_minute AND end_minute <= 1440)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Time the doctor is away, in UTC instants: nothing inside it is offered or booked.
CREATE TABLE time_off (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    start_time DATETIME(6) NOT NULL,
    end_time DATETIME(6) NOT NULL,
    reason VARCHAR(500) NULL,
    created_by BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_time_off_doctor_start (doctor_id, start_time),
    CONSTRAINT fk_time_off_doctor FOREIGN KEY (doctor_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT chk_time_off_interval CHECK (end_time > start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- What a patient can book with a doctor. Deactivated, never deleted: appointments keep theirs.
CREATE TABLE appointment_types (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    name VARCHAR(100) NOT NULL,
    duration_minutes SMALLINT UNSIGNED NOT NULL,
    buffer_before_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    buffer_after_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    min_notice_minutes INT UNSIGNED NOT NULL DEFAULT 0,
    max_days_ahead SMALLINT UNSIGNED NOT NULL DEFAULT 365,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_appointment_types_doctor (doctor_id, active, name),
    CONSTRAINT fk_appointment_types_doctor FOREIGN KEY (doctor_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

ALTER TABLE booking_requests ADD COLUMN appointment_type_id BIGINT UNSIGNED NULL AFTER doctor_id;

-- An appointment keeps the buffers it was booked with: its blocked span is [start - before, end + after).
ALTER TABLE appointments
    ADD COLUMN appointment_type_id BIGINT UNSIGNED NULL AFTER patient_id,
    ADD COLUMN buffer_before_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0 AFTER end_time,
    ADD COLUMN buffer_after_minutes SMALLINT UNSIGNED NOT NULL DEFAULT 0 AFTER buffer_before_minutes,
    ADD CONSTRAINT fk_appointments_type FOREIGN KEY (appointment_type_id) REFERENCES appointment_types (id)
