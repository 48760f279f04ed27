-- Initial schema (PostgreSQL). Never edit a released migration: add a new one.
CREATE TABLE computer (
  id BIGSERIAL PRIMARY KEY,
  reference TEXT NOT NULL UNIQUE,
  address TEXT,
  netmask TEXT,
  attributes TEXT NOT NULL DEFAULT '{}',
  created_at BIGINT NOT NULL,
  last_contact BIGINT
);
CREATE TABLE partition (
  id BIGSERIAL PRIMARY KEY,
  computer_id BIGINT NOT NULL REFERENCES computer(id),
  reference TEXT NOT NULL,
  instance_id BIGINT UNIQUE,
  addresses TEXT NOT NULL DEFAULT '[]',
  UNIQUE (computer_id, reference)
);
CREATE INDEX partition_free ON partition (computer_id, id) WHERE instance_id IS NULL;
CREATE TABLE software_installation (
  computer_id BIGINT NOT NULL REFERENCES computer(id),
  url TEXT NOT NULL,
  requested_state TEXT NOT NULL,
  reported_state TEXT,
  error_log TEXT,
  supply_seq BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (computer_id, url)
);
CREATE TABLE instance (
  id BIGSERIAL PRIMARY KEY,
  title TEXT NOT NULL,
  tree_id BIGINT NOT NULL,
  requester_id BIGINT,
  software_release TEXT NOT NULL,
  software_type TEXT NOT NULL,
  shared BIGINT NOT NULL,
  parameters TEXT NOT NULL,
  sla TEXT NOT NULL,
  requested_state TEXT NOT NULL,
  partition_id BIGINT,
  host_id BIGINT,
  connection_xml TEXT,
  timestamp BIGINT NOT NULL,
  reported_state TEXT,
  reported_at BIGINT,
  status_message TEXT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  archived_at BIGINT
);
CREATE UNIQUE INDEX instance_title ON instance (tree_id, shared, title) WHERE archived_at IS NULL;
CREATE INDEX instance_partition ON instance (partition_id) WHERE archived_at IS NULL;
CREATE INDEX instance_host ON instance (host_id) WHERE archived_at IS NULL;
CREATE INDEX instance_requester ON instance (requester_id) WHERE archived_at IS NULL;
CREATE TABLE event (
  id BIGSERIAL PRIMARY KEY,
  at BIGINT NOT NULL,
  kind TEXT NOT NULL,
  computer TEXT,
  partition TEXT,
  instance_id BIGINT,
  message TEXT NOT NULL
);
CREATE INDEX event_instance ON event (instance_id);
CREATE TABLE usage_report (
  id BIGSERIAL PRIMARY KEY,
  computer_id BIGINT NOT NULL REFERENCES computer(id),
  received_at BIGINT NOT NULL,
  body TEXT NOT NULL
);
