"""Read models built from the event log, stored in SQLite with their stream position."""
