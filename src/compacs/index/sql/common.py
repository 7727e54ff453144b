"""What the statements of every concern share: the placeholder style of the backend, one
row or all rows of a statement, and the joins of the four levels' tables (PS3.4 C.6.1:
patient, study, series, instance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from compacs.dicom.attributes import IMAGE, INDEXED, PATIENT, SERIES, STUDY
from compacs.index.base import InstanceFacts


class Cursor(Protocol):
    """The part of a DB-API 2.0 cursor (PEP 249) the statements use; sqlite3's and
    psycopg's cursors both fit. Rows stay ``Any``: their column types are the statement's."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any:
        """A sequence of 7-item column descriptions (PEP 249); each driver its own type."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ..., /) -> list[Any]: ...

    def close(self) -> None: ...


UNIQUE_COLUMN = {level: INDEXED[level][0].column for level in INDEXED}

ALIAS = {PATIENT: "p", STUDY: "st", SERIES: "se", IMAGE: "i"}
FROM = {
    PATIENT: "patients p",
    STUDY: "studies st JOIN patients p ON p.pk = st.patient_fk",
    SERIES: "series se JOIN studies st ON st.pk = se.study_fk "
    "JOIN patients p ON p.pk = st.patient_fk",
    IMAGE: "instances i JOIN series se ON se.pk = i.series_fk "
    "JOIN studies st ON st.pk = se.study_fk JOIN patients p ON p.pk = st.patient_fk",
}


def alias_of(level: str, query_level: str) -> str:
    """The table alias of ``level``'s attributes in a query at ``query_level``. Below the
    Patient level a patient attribute is the study's own
    (:data:`~compacs.index.schema.STUDY_PATIENT_COLUMNS`): a study is matched on, and
    answered with, what its instances say (PS3.4 C.6.2.1 makes them Study level keys in
    Study Root; Patient Root's lower levels answer the same)."""
    if level == PATIENT and query_level != PATIENT:
        return ALIAS[STUDY]
    return ALIAS[level]


FACTS = (
    "SELECT i.pk, i.sop_instance_uid, i.sop_class_uid, i.storage_key, "
    "i.transfer_syntax_received, i.transfer_syntax_stored, i.bytes_stored, i.calling_ae, "
    "i.called_ae, i.photometric_interpretation, i.bits_stored, i.bits_allocated, "
    "i.pixel_representation, i.compression, i.compression_note, i.tier, i.stored_at, "
    "se.modality, se.series_uid, st.study_uid "
    "FROM instances i JOIN series se ON se.pk = i.series_fk "
    "JOIN studies st ON st.pk = se.study_fk"
)
"""An instance's facts (:data:`~compacs.index.base.InstanceFacts`): what a compression job
and a listing of the instances need."""


class Statements:
    """Index statements on a DB-API cursor. ``ph`` is the placeholder ('?' or '%s');
    ``list_agg`` aggregates distinct values into a comma-separated string."""

    def __init__(
        self, ph: str, list_agg: str = "group_concat(DISTINCT {})", skip_locked: str = ""
    ) -> None:
        self.ph = ph
        self.list_agg = list_agg
        self.skip_locked = skip_locked
        """Appended to the SELECT of a queue claim: ``FOR UPDATE SKIP LOCKED`` where nodes
        share the queue (PostgreSQL); SQLite has one writer and needs none."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.ph) if self.ph != "?" else sql

    def _one(self, cur: Cursor, sql: str, params: Sequence[Any]) -> Any:
        cur.execute(self._q(sql), params)
        return cur.fetchone()

    def _facts(self, cur: Cursor, where: str, params: Sequence[Any]) -> list[InstanceFacts]:
        cur.execute(self._q(f"{FACTS} {where}"), params)
        names = [d[0] for d in cur.description]
        return [cast(InstanceFacts, dict(zip(names, row, strict=True))) for row in cur.fetchall()]
