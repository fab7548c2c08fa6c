DROP TABLE waitlist_entries;
DROP TABLE holds;
DELETE FROM booking_requests WHERE kind IN ('hold', 'confirm_hold');
ALTER TABLE booking_requests
    DROP KEY idx_booking_requests_hold,
    DROP COLUMN hold_id,
    MODIFY kind ENUM('book', 'reschedule') NOT NULL DEFAULT 'book'
