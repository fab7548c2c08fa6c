-- depends: 0003_booking_requests
-- Never read or written: arq counts a job's tries.
ALTER TABLE booking_requests DROP COLUMN attempts
