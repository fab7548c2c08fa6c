DROP TABLE waitlist_entries;
DROP TABLE holds;
-- A confirmed hold's confirmation made an appointment (which cascades with its request): it stays, as a booking.
UPDATE booking_requests SET kind = 'book' WHERE kind = 'confirm_hold';
DELETE FROM booking_requests WHERE kind = 'hold';
ALTER TABLE booking_requests
    DROP KEY idx_booking_requests_hold,
    DROP COLUMN hold_id,
    MODIFY kind ENUM('book', 'reschedule') NOT NULL DEFAULT 'book'
