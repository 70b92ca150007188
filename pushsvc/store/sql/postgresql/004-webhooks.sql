-- Version 3 of the PostgreSQL schema: webhook batches not yet accepted by their receiver, kept
-- so that a restart or a crash does not lose them (pushsvc.webhooks.sender). A row goes once
-- the receiver answered 2xx, or the batch was dropped (retries ran out, or its queue overflowed).

CREATE TABLE pending_webhooks (
    id TEXT PRIMARY KEY,              -- the batch id, sent as X-Pushsvc-Webhook-Id
    app_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,               -- the JSON body, signed at each attempt
    created_at DOUBLE PRECISION NOT NULL  -- seconds since the epoch, UTC
);

CREATE INDEX pending_webhooks_by_age ON pending_webhooks (created_at);
