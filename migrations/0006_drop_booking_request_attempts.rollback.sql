ALTER TABLE booking_requests ADD COLUMN attempts INT UNSIGNED NOT NULL DEFAULT 0 AFTER request_fingerprint
