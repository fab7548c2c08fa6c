-- depends: 0001_users
-- A doctor's bookable windows, half-open [start_time, end_time), in UTC.
CREATE TABLE availabilities (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    doctor_id BIGINT UNSIGNED NOT NULL,
    start_time DATETIME(6) NOT NULL,
    end_time DATETIME(6) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY idx_availabilities_doctor_start (doctor_id, start_time),
    CONSTRAINT fk_availabilities_doctor FOREIGN KEY (doctor_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT chk_availabilities_interval CHECK (end_time > start_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
