ALTER TABLE appointments DROP FOREIGN KEY fk_appointments_type;
ALTER TABLE appointments DROP COLUMN appointment_type_id, DROP COLUMN buffer_before_minutes,
    DROP COLUMN buffer_after_minutes;
ALTER TABLE booking_requests DROP COLUMN appointment_type_id;
DROP TABLE appointment_types;
DROP TABLE time_off;
DROP TABLE weekly_hours;
ALTER TABLE users DROP COLUMN timezone
