-- The usage ledger (PostgreSQL): what each partition consumed over a period, as
-- reported by its node. Append-only: rows are never updated or deleted.
-- Quantities are integers (exact): CPU in microseconds, memory and disk in
-- byte-seconds (the integral over the period), running time in seconds.
-- A node names each report and (computer, report, partition) is unique, so a
-- report sent twice is recorded once.
CREATE TABLE usage_record (
  id BIGSERIAL PRIMARY KEY,
  computer_id BIGINT NOT NULL REFERENCES computer(id),
  report_id TEXT NOT NULL,
  partition_reference TEXT NOT NULL,
  instance_id BIGINT,
  user_id BIGINT,
  tree_id BIGINT,
  software_release TEXT,
  software_type TEXT,
  period_start BIGINT NOT NULL,
  period_end BIGINT NOT NULL,
  cpu_micros BIGINT NOT NULL,
  memory_byte_seconds BIGINT NOT NULL,
  disk_byte_seconds BIGINT NOT NULL,
  running_seconds BIGINT NOT NULL,
  received_at BIGINT NOT NULL,
  UNIQUE (computer_id, report_id, partition_reference)
);
CREATE INDEX usage_record_user ON usage_record (user_id, period_start);
CREATE INDEX usage_record_instance ON usage_record (instance_id, period_start);
CREATE INDEX usage_record_computer ON usage_record (computer_id, period_start)
