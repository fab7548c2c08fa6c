-- Fails on a duplicate key if one patient holds idempotency keys that only case, accents, ignorable characters or
-- a trailing space tell apart: the old collation cannot hold both.
ALTER TABLE users MODIFY specialty VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL;
ALTER TABLE booking_requests MODIFY idempotency_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL
