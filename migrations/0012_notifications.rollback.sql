ALTER TABLE appointments DROP KEY idx_appointments_start;
DROP TABLE calendar_feeds;
DROP TABLE reminders;
DROP TABLE deliveries;
DROP TABLE webhooks;
DROP TABLE outbox_events
