-- name: retire_reset_tokens
-- Asking again retires earlier tokens, so only the newest email works.
UPDATE password_reset_tokens SET used_at = %(now)s WHERE user_id = %(user_id)s AND used_at IS NULL;

-- name: insert_reset_token
INSERT INTO password_reset_tokens (user_id, token_hash, expires_at, created_at)
VALUES (%(user_id)s, %(token_hash)s, %(expires_at)s, %(now)s);

-- name: lock_reset_token
SELECT id, user_id, expires_at, used_at FROM password_reset_tokens
WHERE token_hash = %(token_hash)s FOR UPDATE;

-- name: find_reset_token
SELECT id, user_id, expires_at, used_at FROM password_reset_tokens
WHERE token_hash = %(token_hash)s;
