-- Version 1 of the PostgreSQL schema. Applied by pushsvc.store.postgresql inside one transaction
-- holding an advisory lock, so several processes starting at once migrate only once; the store
-- records the version itself, so this script only creates tables. Tables are created in the
-- first schema of search_path.

CREATE TABLE version (
    version INTEGER NOT NULL
);

-- One row per room: last_id is the newest message id, bumped (row-locked) in the same
-- transaction that inserts the message, so concurrent writers in any number of processes get
-- 1, 2, 3... without gaps or collisions.
CREATE TABLE rooms (
    name TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX rooms_by_last_at ON rooms (last_at DESC);

CREATE TABLE messages (
    room TEXT NOT NULL REFERENCES rooms (name),
    id BIGINT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,  -- seconds since the epoch, UTC
    PRIMARY KEY (room, id)
);
