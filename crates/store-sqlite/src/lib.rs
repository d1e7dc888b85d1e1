//! Embedded SQLite backend (placeholder; being written).
