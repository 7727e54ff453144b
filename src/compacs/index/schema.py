"""The index schema, generated from the attribute table, and its migrations.

One table per query level (PS3.4 C.6.1.1), each row keyed by a surrogate ``pk`` and the
level's unique key, plus per-instance storage bookkeeping. The same DDL serves every SQL
backend; the only dialect difference is how a surrogate key is declared.
"""

from __future__ import annotations

from compacs.dicom.attributes import IMAGE, INDEXED, INTEGER_VRS, PATIENT, SERIES, STUDY

TABLES = {PATIENT: "patients", STUDY: "studies", SERIES: "series", IMAGE: "instances"}
PARENT = {STUDY: PATIENT, SERIES: STUDY, IMAGE: SERIES}
PARENT_FK = {STUDY: "patient_fk", SERIES: "study_fk", IMAGE: "series_fk"}

# Per-instance bookkeeping beside the DICOM attributes.
INSTANCE_STORAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("storage_key", "TEXT NOT NULL"),
    ("transfer_syntax_received", "TEXT NOT NULL"),
    ("transfer_syntax_stored", "TEXT NOT NULL"),
    ("bytes_received", "BIGINT NOT NULL"),
    ("bytes_stored", "BIGINT NOT NULL"),
    ("sha256", "TEXT NOT NULL"),
    ("calling_ae", "TEXT NOT NULL"),
    ("called_ae", "TEXT NOT NULL"),
    ("received_at", "TEXT NOT NULL"),
    ("stored_at", "TEXT NOT NULL"),
)

# Secondary indexes for the keys queries use most (C-FIND, stats).
SECONDARY_INDEXES: tuple[tuple[str, str], ...] = (
    ("patients", "patient_name"),
    ("studies", "patient_fk"),
    ("studies", "study_date"),
    ("studies", "accession_number"),
    ("series", "study_fk"),
    ("series", "modality"),
    ("instances", "series_fk"),
    ("instances", "transfer_syntax_stored"),
)


def _column_type(vr: str) -> str:
    return "INTEGER" if vr in INTEGER_VRS else "TEXT"


def create_statements(pk_declaration: str) -> list[str]:
    """DDL for schema version 1. ``pk_declaration`` is the dialect's surrogate key."""
    statements = []
    for level, table in TABLES.items():
        columns = [f"pk {pk_declaration}"]
        if level in PARENT:
            parent_table = TABLES[PARENT[level]]
            columns.append(f"{PARENT_FK[level]} BIGINT NOT NULL REFERENCES {parent_table}(pk)")
        for i, attr in enumerate(INDEXED[level]):
            not_null = " NOT NULL UNIQUE" if i == 0 else ""
            columns.append(f"{attr.column} {_column_type(attr.vr)}{not_null}")
        if level == IMAGE:
            columns += [f"{name} {decl}" for name, decl in INSTANCE_STORAGE_COLUMNS]
        statements.append(f"CREATE TABLE {table} (\n  " + ",\n  ".join(columns) + "\n)")
    for table, column in SECONDARY_INDEXES:
        statements.append(f"CREATE INDEX ix_{table}_{column} ON {table} ({column})")
    return statements


def migrations(pk_declaration: str) -> dict[int, list[str]]:
    """Statements that bring the schema from version N-1 to N, per N."""
    return {
        1: create_statements(pk_declaration),
        # 2: compression state per instance, and the durable queue of pending compressions
        2: [
            "ALTER TABLE instances ADD COLUMN compression TEXT",
            "ALTER TABLE instances ADD COLUMN compression_note TEXT",
            "CREATE TABLE jobs (\n"
            "  instance_fk BIGINT PRIMARY KEY REFERENCES instances(pk) ON DELETE CASCADE,\n"
            "  not_before DOUBLE PRECISION NOT NULL,\n"
            "  claimed_by TEXT,\n"
            "  claimed_at DOUBLE PRECISION,\n"
            "  attempts INTEGER NOT NULL DEFAULT 0\n"
            ")",
            "CREATE INDEX ix_jobs_not_before ON jobs (not_before)",
        ],
        # 3: the durable forwarding queue (gateway): one row per instance and destination
        3: [
            f"CREATE TABLE forwards (\n  pk {pk_declaration},\n"
            "  instance_fk BIGINT NOT NULL REFERENCES instances(pk) ON DELETE CASCADE,\n"
            "  destination TEXT NOT NULL,\n"
            "  syntaxes TEXT NOT NULL,\n"
            "  options TEXT NOT NULL,\n"
            "  wait_compression INTEGER NOT NULL DEFAULT 0,\n"
            "  retain_days DOUBLE PRECISION,\n"
            "  state TEXT NOT NULL,\n"
            "  not_before DOUBLE PRECISION NOT NULL,\n"
            "  attempts INTEGER NOT NULL DEFAULT 0,\n"
            "  claimed_by TEXT,\n"
            "  transaction_uid TEXT,\n"
            "  transfer_syntax_sent TEXT,\n"
            "  bytes_sent BIGINT,\n"
            "  last_error TEXT,\n"
            "  created_at TEXT NOT NULL,\n"
            "  updated_at TEXT NOT NULL,\n"
            "  UNIQUE (instance_fk, destination)\n"
            ")",
            "CREATE INDEX ix_forwards_state ON forwards (state, not_before)",
            "CREATE INDEX ix_forwards_transaction ON forwards (transaction_uid)",
        ],
        # 4: the index's identity, which the store it owns is marked with (storage/owner)
        4: [
            "CREATE TABLE index_identity (\n"
            "  one INTEGER PRIMARY KEY CHECK (one = 1),\n"
            "  index_id TEXT NOT NULL\n"
            ")",
        ],
    }


SCHEMA_VERSION = 4
