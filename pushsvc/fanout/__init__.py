"""Fan-out: subscription and presence bookkeeping, and the writer that puts frames on sockets."""
