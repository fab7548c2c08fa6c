DROP TABLE booking_requests
