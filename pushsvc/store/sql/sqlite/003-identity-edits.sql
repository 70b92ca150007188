-- Version 3 of the SQLite schema (issue 16): who wrote a message (user_id), the id its page gave
-- it when typed (client_id: a retried POST finds the first one instead of storing a second), and
-- edits (edited_at, deleted: the row holds the current text; a deleted message keeps its id and
-- loses its text). Paging back through a room (WHERE room = ? AND id < ? ORDER BY id DESC) is a
-- range scan of the primary key (room, id), so it needs no index of its own.

ALTER TABLE messages ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN client_id TEXT;
ALTER TABLE messages ADD COLUMN edited_at REAL;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;

-- At most one message per (user, client id): what makes a retried POST idempotent.
CREATE UNIQUE INDEX messages_by_client_id ON messages (user_id, client_id)
    WHERE client_id IS NOT NULL;
