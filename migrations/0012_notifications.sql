-- depends: 0009_schedules
-- Notifications on a transactional outbox: an event row is written in the transaction of the change it tells of,
-- so it exists if and only if that change committed. The worker fans each event out into deliveries (one per
-- channel and recipient, unique), and delivers each until it succeeds or is given up visibly.

CREATE TABLE outbox_events (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    public_id CHAR(36) NOT NULL,
    type VARCHAR(64) NOT NULL,
    appointment_id BIGINT UNSIGNED NULL,
    doctor_id BIGINT UNSIGNED NOT NULL,
    patient_id BIGINT UNSIGNED NOT NULL,
    payload LONGTEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    -- Set once its deliveries exist; the sweep fans out whatever is still NULL.
    dispatched_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_outbox_events_public_id (public_id),
    KEY idx_outbox_events_undispatched (dispatched_at, id),
    KEY idx_outbox_events_appointment (appointment_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Endpoints that receive signed JSON POSTs. scope 'own': the owner's (a doctor's) appointments; 'all': every one.
CREATE TABLE webhooks (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    owner_id BIGINT UNSIGNED NOT NULL,
    scope ENUM('own', 'all') NOT NULL,
    url VARCHAR(2000) NOT NULL,
    events VARCHAR(1000) NOT NULL,
    secret VARCHAR(100) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    disabled_at DATETIME(6) NULL,
    disabled_reason VARCHAR(500) NULL,
    PRIMARY KEY (id),
    KEY idx_webhooks_owner (owner_id, id),
    KEY idx_webhooks_scope (scope, disabled_at),
    CONSTRAINT fk_webhooks_owner FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per (event, channel, recipient): the unique key makes each delivery happen once however often the
-- fan-out runs. recipient: a user id (email) or a webhook id (webhook).
CREATE TABLE deliveries (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id BIGINT UNSIGNED NOT NULL,
    channel ENUM('email', 'webhook') NOT NULL,
    recipient VARCHAR(64) NOT NULL,
    webhook_id BIGINT UNSIGNED NULL,
    status ENUM('pending', 'delivered', 'failed', 'skipped') NOT NULL DEFAULT 'pending',
    attempts SMALLINT UNSIGNED NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    -- A worker delivering it holds it (claim: that worker's batch) until then; a dead worker's claim lapses and the
    -- sweep takes the delivery up again.
    claim CHAR(32) NULL,
    locked_until DATETIME(6) NULL,
    last_response_code SMALLINT UNSIGNED NULL,
    last_error VARCHAR(500) NULL,
    created_at DATETIME(6) NOT NULL,
    delivered_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_deliveries_event_channel_recipient (event_id, channel, recipient),
    KEY idx_deliveries_due (status, next_attempt_at),
    KEY idx_deliveries_webhook (webhook_id, id),
    CONSTRAINT fk_deliveries_event FOREIGN KEY (event_id) REFERENCES outbox_events (id) ON DELETE CASCADE,
    CONSTRAINT fk_deliveries_webhook FOREIGN KEY (webhook_id) REFERENCES webhooks (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A reminder is made once per appointment and offset (its outbox event, in the same transaction): the unique key
-- makes "exactly once" a constraint.
CREATE TABLE reminders (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    appointment_id BIGINT UNSIGNED NOT NULL,
    offset_seconds INT UNSIGNED NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_reminders_appointment_offset (appointment_id, offset_seconds),
    CONSTRAINT fk_reminders_appointment FOREIGN KEY (appointment_id) REFERENCES appointments (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Secret calendar URLs: only the token's SHA-256 is kept.
CREATE TABLE calendar_feeds (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id BIGINT UNSIGNED NOT NULL,
    token_hash BINARY(32) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_calendar_feeds_token (token_hash),
    KEY idx_calendar_feeds_user (user_id, id),
    CONSTRAINT fk_calendar_feeds_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The reminder sweep reads the appointments starting soon, across doctors.
ALTER TABLE appointments ADD KEY idx_appointments_start (start_time);
