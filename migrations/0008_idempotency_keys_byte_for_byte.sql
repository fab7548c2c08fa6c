-- depends: 0006_drop_booking_request_attempts
-- Idempotency keys compare byte for byte. In utf8mb4_unicode_ci, `order-abc` was `Order-ABC` (and `cafe` was
-- `café`), and PAD SPACE made `Order-ABC ` `Order-ABC`: a patient's different keys replayed each other's requests,
-- or were refused as one key reused with another body. No character collation is exact on both servers:
-- utf8mb4_bin is PAD SPACE on MySQL 8.0 and MariaDB 10.11 alike, and the NO PAD ones are each one server's own
-- (utf8mb4_0900_bin on MySQL, utf8mb4_nopad_bin on MariaDB). VARBINARY compares every byte, on both.
-- 1020 bytes is what a VARCHAR(255) in utf8mb4 could hold, so every key stored before converts; keys the API takes
-- now are at most 255 printable ASCII characters. The unique key (patient_id, idempotency_key) stays as it is.
ALTER TABLE booking_requests MODIFY idempotency_key VARBINARY(1020) NULL
