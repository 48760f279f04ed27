-- The usage ledger (SQLite): what each partition consumed over a period, as
-- reported by its node. Append-only: rows are never updated or deleted.
-- Quantities are integers (exact): CPU in microseconds, memory and disk in
-- byte-seconds (the integral over the period), running time in seconds.
-- A node names each report and (computer, report, partition) is unique, so a
-- report sent twice is recorded once.
CREATE TABLE usage_record (
  id INTEGER PRIMARY KEY,
  computer_id INTEGER NOT NULL REFERENCES computer(id),
  report_id TEXT NOT NULL,
  partition_reference TEXT NOT NULL,
  instance_id INTEGER,
  user_id INTEGER,
  tree_id INTEGER,
  software_release TEXT,
  software_type TEXT,
  period_start INTEGER NOT NULL,
  period_end INTEGER NOT NULL,
  cpu_micros INTEGER NOT NULL,
  memory_byte_seconds INTEGER NOT NULL,
  disk_byte_seconds INTEGER NOT NULL,
  running_seconds INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  UNIQUE (computer_id, report_id, partition_reference)
);
CREATE INDEX usage_record_user ON usage_record (user_id, period_start);
CREATE INDEX usage_record_instance ON usage_record (instance_id, period_start);
CREATE INDEX usage_record_computer ON usage_record (computer_id, period_start)
