-- depends: 0013_holds_waitlist
-- A booking request's `requested` history row is appended with its decision now (core/history.py), not with its
-- insert. Requests stored before this have theirs already: they are marked so, and their decision adds none.
ALTER TABLE booking_requests ADD COLUMN requested_in_history BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE booking_requests ALTER COLUMN requested_in_history SET DEFAULT FALSE;
