-- The outbox, its deliveries, webhooks, reminders and calendar feeds (migration 0012).

-- name: insert_outbox_events
INSERT INTO outbox_events (public_id, type, appointment_id, doctor_id, patient_id, payload, created_at)
VALUES (%(public_id)s, %(type)s, %(appointment_id)s, %(doctor_id)s, %(patient_id)s, %(payload)s, %(now)s);

-- name: lock_undispatched_events
-- Oldest first; rows another worker is fanning out are skipped rather than waited for.
SELECT id, public_id, type, doctor_id, patient_id, appointment_id FROM outbox_events
WHERE dispatched_at IS NULL
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: list_webhooks_for_doctors
SELECT id, owner_id, scope, events FROM webhooks
WHERE disabled_at IS NULL AND (scope = 'all' OR (scope = 'own' AND owner_id IN %(doctor_ids)s));

-- name: insert_deliveries
-- IGNORE: the unique (event, channel, recipient) makes a second fan-out of one event a no-op.
INSERT IGNORE INTO deliveries (event_id, channel, recipient, webhook_id, next_attempt_at, created_at)
VALUES (%(event_id)s, %(channel)s, %(recipient)s, %(webhook_id)s, %(now)s, %(now)s);

-- name: mark_events_dispatched
UPDATE outbox_events SET dispatched_at = %(now)s WHERE id IN %(ids)s;

-- name: pending_deliveries_of_events
SELECT id FROM deliveries WHERE event_id IN %(ids)s AND status = 'pending';

-- name: count_undispatched_events
SELECT COUNT(*) FROM outbox_events WHERE dispatched_at IS NULL;

-- name: list_due_deliveries
SELECT id FROM deliveries
WHERE status = 'pending' AND next_attempt_at <= %(now)s AND (locked_until IS NULL OR locked_until < %(now)s)
ORDER BY next_attempt_at
LIMIT %(limit)s;

-- name: claim_deliveries
-- One attempt at each: counted now, so a worker killed mid-attempt has used it up.
UPDATE deliveries SET attempts = attempts + 1, claim = %(claim)s, locked_until = %(until)s
WHERE id IN %(ids)s AND status = 'pending' AND next_attempt_at <= %(now)s
  AND (locked_until IS NULL OR locked_until < %(now)s);

-- name: list_claimed_deliveries
SELECT d.id, d.channel, d.recipient, d.webhook_id, d.attempts, e.public_id, e.type, e.appointment_id, e.doctor_id,
       e.patient_id, e.payload, e.created_at AS event_created_at, w.url, w.secret, w.disabled_at
FROM deliveries d
JOIN outbox_events e ON e.id = d.event_id
LEFT JOIN webhooks w ON w.id = d.webhook_id
WHERE d.id IN %(ids)s AND d.claim = %(claim)s;

-- name: deliveries_succeeded
UPDATE deliveries SET status = 'delivered', delivered_at = %(now)s, last_response_code = %(code)s,
                      last_error = NULL, claim = NULL, locked_until = NULL
WHERE id IN %(ids)s AND claim = %(claim)s;

-- name: delivery_skipped
UPDATE deliveries SET status = 'skipped', last_error = %(error)s, claim = NULL, locked_until = NULL
WHERE id = %(id)s;

-- name: delivery_will_retry
UPDATE deliveries SET next_attempt_at = %(next)s, last_error = %(error)s, last_response_code = %(code)s,
                      claim = NULL, locked_until = NULL
WHERE id = %(id)s;

-- name: delivery_failed
UPDATE deliveries SET status = 'failed', last_error = %(error)s, last_response_code = %(code)s, claim = NULL,
                      locked_until = NULL
WHERE id = %(id)s;

-- name: find_people
-- The doctors and patients of a batch's emails: addresses, names, the doctors' time zones.
SELECT id, email, name, role, timezone FROM users WHERE id IN %(ids)s;

-- name: count_webhooks_of_owner
SELECT COUNT(*) FROM webhooks WHERE owner_id = %(owner_id)s;

-- name: insert_webhook
INSERT INTO webhooks (owner_id, scope, url, events, secret, created_at)
VALUES (%(owner_id)s, %(scope)s, %(url)s, %(events)s, %(secret)s, %(now)s);

-- name: list_webhooks_of_owner
SELECT id, owner_id, scope, url, events, created_at, disabled_at, disabled_reason FROM webhooks
WHERE owner_id = %(owner_id)s ORDER BY id;

-- name: find_webhook
SELECT id, owner_id, scope, url, events, created_at, disabled_at, disabled_reason FROM webhooks WHERE id = %(id)s;

-- name: delete_webhook
DELETE FROM webhooks WHERE id = %(id)s AND owner_id = %(owner_id)s;

-- name: disable_webhook
UPDATE webhooks SET disabled_at = %(now)s, disabled_reason = %(reason)s WHERE id = %(id)s AND disabled_at IS NULL;

-- name: list_webhook_deliveries
SELECT d.id, e.public_id AS event_id, e.type AS event_type, d.status, d.attempts, d.last_response_code,
       d.last_error, d.created_at, d.delivered_at,
       CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at
FROM deliveries d JOIN outbox_events e ON e.id = d.event_id
WHERE d.webhook_id = %(webhook_id)s
ORDER BY d.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_due_reminders
-- Appointments still going ahead whose reminder `offset` seconds before the start has come due, that were booked
-- before that moment, and that have had neither this reminder nor a later (smaller offset) one.
SELECT a.id, a.doctor_id, a.patient_id, a.appointment_type_id, a.booking_request_id, a.start_time, a.end_time,
       a.status
FROM appointments a
WHERE a.start_time > %(now)s AND a.start_time <= %(now)s + INTERVAL %(offset)s SECOND
  AND a.created_at <= a.start_time - INTERVAL %(offset)s SECOND
  AND a.status IN %(active)s
  AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.appointment_id = a.id AND r.offset_seconds <= %(offset)s)
ORDER BY a.start_time
LIMIT %(limit)s;

-- name: insert_reminders
INSERT INTO reminders (appointment_id, offset_seconds, created_at) VALUES (%(appointment_id)s, %(offset)s, %(now)s);

-- name: list_active_appointments
-- Of these appointments, those still going ahead (a reminder of any other is not sent).
SELECT id FROM appointments WHERE id IN %(ids)s AND status IN %(active)s AND start_time > %(now)s;

-- name: insert_calendar_feed
INSERT INTO calendar_feeds (user_id, token_hash, created_at) VALUES (%(user_id)s, %(token_hash)s, %(now)s);

-- name: find_calendar_feed
SELECT f.id, f.user_id, u.role, u.name FROM calendar_feeds f JOIN users u ON u.id = f.user_id
WHERE f.token_hash = %(token_hash)s;

-- name: list_calendar_feeds_of_user
SELECT id, created_at FROM calendar_feeds WHERE user_id = %(user_id)s ORDER BY id;

-- name: count_calendar_feeds_of_user
SELECT COUNT(*) FROM calendar_feeds WHERE user_id = %(user_id)s;

-- name: delete_calendar_feed
DELETE FROM calendar_feeds WHERE id = %(id)s AND user_id = %(user_id)s;

-- name: count_due_deliveries
SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= %(now)s;
