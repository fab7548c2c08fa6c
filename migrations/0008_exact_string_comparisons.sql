-- depends: 0006_drop_booking_request_attempts
-- Strings compared as exactly as each one's meaning asks. utf8mb4_unicode_ci (UCA 4.0.0) takes `order-abc` for
-- `Order-ABC`, ignores characters such as a zero-width space, gives every character beyond the
-- BMP (emoji, 𝓤) one and the same weight, and, PAD SPACE, takes `Order-ABC ` for `Order-ABC`.

-- Idempotency keys, byte for byte: a patient's different keys replayed each other's requests, or were refused as
-- one key reused with another body. No character collation is exact on both servers: utf8mb4_bin is PAD SPACE on
-- MySQL 8.0 and MariaDB 10.11 alike, and the NO PAD ones are each one server's own (utf8mb4_0900_bin on MySQL,
-- utf8mb4_nopad_bin on MariaDB). VARBINARY compares every byte, on both. 1020 bytes is what a VARCHAR(255) in
-- utf8mb4 could hold, so every key stored before converts; keys the API takes now are at most 255 printable ASCII
-- characters. The unique key (patient_id, idempotency_key) stays as it is.
ALTER TABLE booking_requests MODIFY idempotency_key VARBINARY(1020) NULL;

-- (Emails are compared exactly since 0007_exact_emails, which also normalizes them.)

-- Specialties, a search filter: still blind to case and accents, but `🦷` no longer finds `🩺`. UCA 5.2.0 weighs
-- characters beyond the BMP apart, and utf8mb4_unicode_520_ci exists on both servers.
ALTER TABLE users MODIFY specialty VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci NULL
