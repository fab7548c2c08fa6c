ALTER TABLE booking_requests DROP COLUMN requested_in_history;
