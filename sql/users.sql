-- name: find_user_by_id
SELECT id, email, name, role, specialty, token_version, created_at
FROM users WHERE id = %(id)s;

-- name: find_user_by_email
SELECT id, email, name, role, specialty, token_version, password_hash, created_at
FROM users WHERE email = %(email)s;

-- name: insert_user
INSERT INTO users (email, name, role, specialty, timezone, password_hash, created_at)
VALUES (%(email)s, %(name)s, %(role)s, %(specialty)s, %(timezone)s, %(password_hash)s, %(created_at)s);

-- name: change_password
-- Bumping token_version retires every token issued before the change.
UPDATE users SET password_hash = %(password_hash)s, token_version = token_version + 1
WHERE id = %(id)s;

-- name: lock_doctor
-- The per-doctor row lock: every writer of a doctor's windows or appointments takes it first. No row when there is
-- no such doctor; the time zone for a decision, which reads the doctor's hours right after.
SELECT id, timezone FROM users WHERE id = %(doctor_id)s AND role = 'Doctor' FOR UPDATE;

-- name: lock_doctors
-- lock_doctor for the doctors of a group decision (and any others it must hold), in ascending id order, so that two
-- groups locking overlapping sets cannot deadlock on each other. A row that is not a doctor's is locked too (its
-- requests are rejected).
SELECT id, role, timezone FROM users WHERE id IN %(ids)s ORDER BY id FOR UPDATE;
