//! The append-only JSONL event journal. Filled in by the tracker work.
