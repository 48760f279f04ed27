-- Initial schema (SQLite). Never edit a released migration: add a new one.
CREATE TABLE computer (
  id INTEGER PRIMARY KEY,
  reference TEXT NOT NULL UNIQUE,
  address TEXT,
  netmask TEXT,
  attributes TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL,
  last_contact INTEGER
);
CREATE TABLE partition (
  id INTEGER PRIMARY KEY,
  computer_id INTEGER NOT NULL REFERENCES computer(id),
  reference TEXT NOT NULL,
  instance_id INTEGER UNIQUE,
  addresses TEXT NOT NULL DEFAULT '[]',
  UNIQUE (computer_id, reference)
);
CREATE INDEX partition_free ON partition (computer_id, id) WHERE instance_id IS NULL;
CREATE TABLE software_installation (
  computer_id INTEGER NOT NULL REFERENCES computer(id),
  url TEXT NOT NULL,
  requested_state TEXT NOT NULL,
  reported_state TEXT,
  error_log TEXT,
  supply_seq INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (computer_id, url)
);
CREATE TABLE instance (
  id INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  tree_id INTEGER NOT NULL,
  requester_id INTEGER,
  software_release TEXT NOT NULL,
  software_type TEXT NOT NULL,
  shared INTEGER NOT NULL,
  parameters TEXT NOT NULL,
  sla TEXT NOT NULL,
  requested_state TEXT NOT NULL,
  partition_id INTEGER,
  host_id INTEGER,
  connection_xml TEXT,
  timestamp INTEGER NOT NULL,
  reported_state TEXT,
  reported_at INTEGER,
  status_message TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  archived_at INTEGER
);
CREATE UNIQUE INDEX instance_title ON instance (tree_id, shared, title) WHERE archived_at IS NULL;
CREATE INDEX instance_partition ON instance (partition_id) WHERE archived_at IS NULL;
CREATE INDEX instance_host ON instance (host_id) WHERE archived_at IS NULL;
CREATE INDEX instance_requester ON instance (requester_id) WHERE archived_at IS NULL;
CREATE TABLE event (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  computer TEXT,
  partition TEXT,
  instance_id INTEGER,
  message TEXT NOT NULL
);
CREATE INDEX event_instance ON event (instance_id);
CREATE TABLE usage_report (
  id INTEGER PRIMARY KEY,
  computer_id INTEGER NOT NULL REFERENCES computer(id),
  received_at INTEGER NOT NULL,
  body TEXT NOT NULL
);
