-- The W3C traceparent of the call that wrote the event, so the relay and
-- consumers continue its trace across the queue.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
