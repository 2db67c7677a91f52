"""The label every model here learns, shared by what writes labels and what trains on them.

A label row is (customer_id, event_timestamp, churned): whether the customer cancelled within
LABEL_HORIZON_DAYS after event_timestamp. The synthetic generator writes them to LABELS_FILE in
the repo's data directory; a real deployment writes the same file from its warehouse.
"""

LABELS_FILE = "churn_labels.parquet"
LABEL_HORIZON_DAYS = 30
