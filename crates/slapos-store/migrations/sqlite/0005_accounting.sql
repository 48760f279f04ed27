-- Accounting (SQLite): price lists with validity dates, invoices and credit
-- notes with their lines, and which usage records each invoice billed.
-- Price lists, invoices and their lines are never updated once written:
-- a correction is a credit note, a new price is a new list.
-- Amounts and prices are exact decimals kept as text.
CREATE TABLE price_list (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  currency TEXT NOT NULL,
  valid_from INTEGER NOT NULL,
  valid_to INTEGER,
  created_at INTEGER NOT NULL
);
CREATE TABLE price (
  id INTEGER PRIMARY KEY,
  price_list_id INTEGER NOT NULL REFERENCES price_list(id),
  resource TEXT NOT NULL,
  software_release TEXT,
  software_type TEXT,
  unit_price TEXT NOT NULL
);
CREATE UNIQUE INDEX price_key ON price (price_list_id, resource, COALESCE(software_release, ''), COALESCE(software_type, ''));
CREATE TABLE invoice (
  id INTEGER PRIMARY KEY,
  number TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  user_id INTEGER,
  period TEXT NOT NULL,
  currency TEXT NOT NULL,
  total TEXT NOT NULL,
  corrects_id INTEGER REFERENCES invoice(id),
  reason TEXT,
  issued_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX invoice_user_period ON invoice (COALESCE(user_id, 0), period) WHERE kind = 'invoice';
CREATE INDEX invoice_user ON invoice (user_id, id);
CREATE TABLE invoice_line (
  id INTEGER PRIMARY KEY,
  invoice_id INTEGER NOT NULL REFERENCES invoice(id),
  tree_id INTEGER,
  tree_title TEXT NOT NULL,
  software_release TEXT,
  software_type TEXT,
  resource TEXT NOT NULL,
  quantity TEXT NOT NULL,
  unit_price TEXT NOT NULL,
  amount TEXT NOT NULL
);
CREATE INDEX invoice_line_invoice ON invoice_line (invoice_id);
CREATE TABLE invoiced_usage (
  record_id INTEGER PRIMARY KEY REFERENCES usage_record(id),
  invoice_id INTEGER NOT NULL REFERENCES invoice(id)
)
