-- Version 1 of the SQLite schema. Applied by pushsvc.store.sqlite inside one transaction;
-- the store records the version itself, so this script only creates tables.

CREATE TABLE version (
    version INTEGER NOT NULL
);

-- One row per room: last_id is the newest message id, bumped in the same transaction that
-- inserts the message, so ids are assigned 1, 2, 3... without gaps or collisions.
CREATE TABLE rooms (
    name TEXT PRIMARY KEY NOT NULL,
    last_id INTEGER NOT NULL,
    last_at REAL NOT NULL
);

CREATE INDEX rooms_by_last_at ON rooms (last_at DESC);

CREATE TABLE messages (
    room TEXT NOT NULL REFERENCES rooms (name),
    id INTEGER NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL,   -- seconds since the epoch, UTC
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
