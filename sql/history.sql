-- The appointment history: append-only. This file holds the only statements that touch the table, and there is
-- no UPDATE or DELETE among them (tests/test_lifecycle.py reads every SQL file to keep it so).

-- name: insert_history
INSERT INTO appointment_history (appointment_id, booking_request_id, at, actor_id, actor_role, action, from_status,
                                 to_status, reason)
VALUES (%(appointment_id)s, %(booking_request_id)s, %(at)s, %(actor_id)s, %(actor_role)s, %(action)s,
        %(from_status)s, %(to_status)s, %(reason)s);

-- name: list_history_of_appointment
-- The appointment's own rows and those of the booking request that made it (requested, decided), in the order they
-- happened: a request's `requested` row is appended with its decision, at the time it was made. Bounded like every
-- list: an appointment changes a handful of times, the limit guards against the unforeseen.
SELECT at, actor_id, actor_role, action, from_status, to_status, reason, booking_request_id, appointment_id
FROM appointment_history
WHERE appointment_id = %(appointment_id)s OR booking_request_id = %(booking_request_id)s
ORDER BY at, id
LIMIT %(limit)s;
