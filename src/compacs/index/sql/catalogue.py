"""The catalogue's statements: instances in (a C-STORE becomes rows, PS3.4 C.6.1's four
levels), found (C-FIND, PS3.4 C.2.2.2), listed, located, selected and deleted, and the
index's identity (storage/owner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from compacs.clock import utc_now
from compacs.dicom.attributes import IMAGE, INDEXED, LEVELS, PATIENT, SERIES, STUDY
from compacs.index.base import (
    AddResult,
    Duplicates,
    Forward,
    InstanceFacts,
    InstanceLocation,
    NewInstance,
    Selected,
    StoredInstance,
)
from compacs.index.schema import (
    INGEST_TIER,
    INSTANCE_STORAGE_COLUMNS,
    PARENT_FK,
    STUDY_PATIENT_COLUMNS,
    TABLES,
    patient_key,
)
from compacs.index.sql.common import ALIAS, FROM, UNIQUE_COLUMN, Cursor, Statements, alias_of
from compacs.query import INDEXED_KEYS, Query, like_pattern

_UNDER = {
    PATIENT: "p.patient_id",
    STUDY: "st.study_uid",
    SERIES: "se.series_uid",
    IMAGE: "i.sop_instance_uid",
}
"""The column a level's UID is in, for the instances under one entity."""

_COUNTS = {
    "NumberOfPatientRelatedStudies": "SELECT COUNT(*) FROM studies x WHERE x.patient_fk = p.pk",
    "NumberOfPatientRelatedSeries": "SELECT COUNT(*) FROM series x JOIN studies y "
    "ON y.pk = x.study_fk WHERE y.patient_fk = p.pk",
    "NumberOfPatientRelatedInstances": "SELECT COUNT(*) FROM instances x JOIN series y "
    "ON y.pk = x.series_fk JOIN studies z ON z.pk = y.study_fk WHERE z.patient_fk = p.pk",
    "NumberOfStudyRelatedSeries": "SELECT COUNT(*) FROM series x WHERE x.study_fk = st.pk",
    "NumberOfStudyRelatedInstances": "SELECT COUNT(*) FROM instances x JOIN series y "
    "ON y.pk = x.series_fk WHERE y.study_fk = st.pk",
    "NumberOfSeriesRelatedInstances": "SELECT COUNT(*) FROM instances x WHERE x.series_fk = se.pk",
}
_LISTS = {
    "ModalitiesInStudy": ("x.modality", "series x WHERE x.study_fk = st.pk"),
    "SOPClassesInStudy": (
        "x.sop_class_uid",
        "instances x JOIN series y ON y.pk = x.series_fk WHERE y.study_fk = st.pk",
    ),
}


def _tm(column: str) -> str:
    """A stored TM value padded to HHMMSS so that it compares with the bounds that
    query.parse_identifier pads the same way ("0930" is 09:30:00)."""
    return (
        f"(substr(COALESCE({column}, '') || '000000', 1, 6) || substr(COALESCE({column}, ''), 7))"
    )


class CatalogueStatements(Statements):
    """Mixed into :class:`~compacs.index.sql.statements.SqlStatements`, which provides the
    queueing of a new instance's compression job and deliveries (``queue_job``,
    ``queue_forwards``)."""

    queue_job: Callable[[Any, NewInstance], None]
    queue_forwards: Callable[[Any, int, Sequence[Forward]], None]

    # -- add ---------------------------------------------------------------------------
    def _row_pk(
        self,
        cur: Cursor,
        table: str,
        key: str,
        values: dict[str, Any],
        parent: tuple[str, int] | None,
    ) -> int:
        """pk of ``table``'s row whose ``key`` column is ``values[key]``, inserting it when
        new (first writer wins); ``parent`` is (foreign key column, pk)."""
        row = self._one(cur, f"SELECT pk FROM {table} WHERE {key} = ?", (values[key],))
        if row:
            return int(row[0])
        columns = list(values)
        params = [values[c] for c in columns]
        if parent is not None:
            columns.append(parent[0])
            params.append(parent[1])
        marks = ", ".join("?" for _ in columns)
        cur.execute(
            self._q(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
                f"ON CONFLICT ({key}) DO NOTHING"
            ),
            params,
        )
        row = self._one(cur, f"SELECT pk FROM {table} WHERE {key} = ?", (values[key],))
        return int(row[0])

    def _level_pk(self, cur: Cursor, level: str, values: dict[str, Any], parent_pk: int) -> int:
        """pk of the series or instance row for ``values`` (keyed by the level's UID)."""
        return self._row_pk(
            cur, TABLES[level], UNIQUE_COLUMN[level], values, (PARENT_FK[level], parent_pk)
        )

    def _study_pk(self, cur: Cursor, attrs: dict[str, dict[str, Any]]) -> int:
        """pk of the instance's study, made with its patient's when new.

        The patient row is the one of :func:`~compacs.index.schema.patient_key` (Patient ID
        + Issuer of Patient ID; a study without Patient ID has its own). A new study keeps
        its instances' patient attributes as its own (first writer wins, like its other
        attributes); an instance of a known study stays with that study's patient.
        """
        study, patient = attrs[STUDY], attrs[PATIENT]
        key = patient_key(patient, study["study_uid"])
        row = self._one(
            cur, "SELECT pk, patient_fk FROM studies WHERE study_uid = ?", (study["study_uid"],)
        )
        if row is not None:
            self._refresh_patient(cur, row[1], key, patient)
            return int(row[0])
        patient_pk = self._row_pk(
            cur, "patients", "patient_key", {"patient_key": key, **patient}, None
        )
        self._refresh_patient(cur, patient_pk, key, patient)
        own = {c: patient[c] for c in STUDY_PATIENT_COLUMNS}
        return self._row_pk(
            cur, "studies", "study_uid", {**study, **own}, (PARENT_FK[STUDY], patient_pk)
        )

    def _refresh_patient(self, cur: Cursor, pk: int, key: str, patient: dict[str, Any]) -> None:
        """Give patient row ``pk`` the attributes of its latest received instance.

        A patient (one Patient ID of one issuer) answers the Patient level of Patient Root
        (PS3.4 C.6.1.1.2) with one name, birth date and sex, matched as answered: those of
        the instance received last, as Orthanc and dcm4chee update a patient record (a
        renamed patient answers the new name; each study keeps its own). Written only when
        they differ, and only when the instance is of this patient (``key``).
        """
        columns = [c for c in STUDY_PATIENT_COLUMNS if c != "patient_id"]
        row = self._one(
            cur, f"SELECT patient_key, {', '.join(columns)} FROM patients WHERE pk = ?", (pk,)
        )
        if row is None or row[0] != key or list(row[1:]) == [patient[c] for c in columns]:
            return
        cur.execute(
            self._q(f"UPDATE patients SET {', '.join(f'{c} = ?' for c in columns)} WHERE pk = ?"),
            [*(patient[c] for c in columns), pk],
        )

    def add_instance(self, cur: Cursor, inst: NewInstance, duplicates: Duplicates) -> AddResult:
        attrs = inst.attributes
        study_pk = self._study_pk(cur, attrs)
        series_pk = self._level_pk(cur, SERIES, attrs[SERIES], study_pk)

        values = dict(attrs[IMAGE])
        values.update(
            series_fk=series_pk,
            storage_key=inst.storage_key,
            transfer_syntax_received=inst.transfer_syntax,
            transfer_syntax_stored=inst.transfer_syntax,
            bytes_received=inst.bytes_received,
            bytes_stored=inst.bytes_stored,
            sha256=inst.sha256,
            calling_ae=inst.calling_ae,
            called_ae=inst.called_ae,
            received_at=inst.received_at,
            stored_at=utc_now(),
            compression_note=inst.compression_note,
        )
        existing = self._one(
            cur,
            "SELECT pk, storage_key, series_fk FROM instances WHERE sop_instance_uid = ?",
            (inst.sop_instance_uid,),
        )
        if existing is None:
            columns = list(values)
            marks = ", ".join("?" for _ in columns)
            cur.execute(
                self._q(
                    f"INSERT INTO instances ({', '.join(columns)}) VALUES ({marks}) "
                    "ON CONFLICT (sop_instance_uid) DO NOTHING"
                ),
                [values[c] for c in columns],
            )
            if cur.rowcount == 1:
                self.queue_job(cur, inst)
                self._queue_forwards(cur, inst)
                return AddResult(added=True)
            # another node indexed it since our look-up (shared index): a duplicate
            existing = self._one(
                cur,
                "SELECT pk, storage_key, series_fk FROM instances WHERE sop_instance_uid = ?",
                (inst.sop_instance_uid,),
            )

        pk, old_key, old_series_pk = existing
        if duplicates is Duplicates.KEEP_FIRST:
            return AddResult(
                added=False, obsolete_key=None if old_key == inst.storage_key else inst.storage_key
            )
        # a new object: its compression starts afresh, in the ingest tier
        values.update(compression=None, tier=INGEST_TIER)
        assignments = ", ".join(f"{c} = ?" for c in values)
        cur.execute(
            self._q(f"UPDATE instances SET {assignments} WHERE pk = ?"),
            [*values.values(), pk],
        )
        cur.execute(self._q("DELETE FROM jobs WHERE instance_fk = ?"), (pk,))
        self.queue_job(cur, inst)
        self._queue_forwards(cur, inst)
        if old_series_pk != series_pk:
            self._prune_series(cur, old_series_pk)
        return AddResult(added=True, obsolete_key=None if old_key == inst.storage_key else old_key)

    def _queue_forwards(self, cur: Cursor, inst: NewInstance) -> None:
        if inst.forwards:
            row = self._one(
                cur, "SELECT pk FROM instances WHERE sop_instance_uid = ?", (inst.sop_instance_uid,)
            )
            self.queue_forwards(cur, row[0], inst.forwards)

    # -- C-FIND, C-MOVE, C-GET (PS3.4 C.2.2.2) --------------------------------------------
    def _where(self, query: Query) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for c in query.conditions:
            alias = alias_of(c.level, query.level)
            col = f"{alias}.{c.column}"
            if c.kind in ("equal", "like"):
                op = "=" if c.kind == "equal" else "LIKE"
                escape = " ESCAPE '\\'" if c.kind == "like" else ""
                if c.kind == "like":  # '*' also matches an empty value (C.2.2.2.4)
                    col = f"COALESCE({col}, '')"
                if c.case_insensitive:
                    clauses.append(f"LOWER({col}) {op} LOWER(?){escape}")
                else:
                    clauses.append(f"{col} {op} ?{escape}")
                params.append(c.values[0])
            elif c.kind == "in":
                clauses.append(f"{col} IN ({', '.join('?' for _ in c.values)})")
                params += list(c.values)
            elif c.kind == "empty":
                clauses.append(f"({col} IS NULL OR {col} = '')")
            elif c.kind in ("range", "datetime_range"):
                if c.kind == "datetime_range":
                    date, time = c.column.split("|")
                    col = f"(COALESCE({alias}.{date}, '') || {_tm(f'{alias}.{time}')})"
                elif INDEXED_KEYS[c.keyword][2] == "TM":
                    col = _tm(col)
                lo, hi = c.values
                if lo is not None:
                    clauses.append(f"{col} >= ?")
                    params.append(lo)
                if hi is not None:
                    clauses.append(f"{col} <= ?")
                    params.append(hi)
            elif c.kind == "modalities":  # any series of the study matches one value
                tests = []
                for value in c.values:
                    if "*" in value or "?" in value:
                        tests.append("COALESCE(x.modality, '') LIKE ? ESCAPE '\\'")
                        params.append(like_pattern(value))
                    else:
                        tests.append("x.modality = ?")
                        params.append(value)
                clauses.append(
                    "EXISTS (SELECT 1 FROM series x WHERE x.study_fk = st.pk "
                    f"AND ({' OR '.join(tests)}))"
                )
            else:  # pragma: no cover - parse_identifier makes only the kinds above
                raise ValueError(c.kind)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def find(self, cur: Cursor, query: Query) -> Iterator[dict[str, Any]]:
        """Rows of the query level matching ``query``, with the keys it asks for."""
        depth = LEVELS.index(query.level)
        selects = [
            f"{alias_of(level, query.level)}.{attr.column}"
            for level in LEVELS[: depth + 1]
            for attr in INDEXED[level]
        ]
        for keyword in query.return_keys:
            if keyword in _COUNTS:
                selects.append(f'({_COUNTS[keyword]}) AS "{keyword}"')
            elif keyword in _LISTS:
                expr, source = _LISTS[keyword]
                selects.append(
                    f'(SELECT {self.list_agg.format(expr)} FROM {source}) AS "{keyword}"'
                )
        where, params = self._where(query)
        alias = ALIAS[query.level]
        cur.execute(
            self._q(
                f"SELECT {', '.join(selects)} FROM {FROM[query.level]}{where} ORDER BY {alias}.pk"
            ),
            params,
        )
        names = [d[0].split(".")[-1] for d in cur.description]
        while rows := cur.fetchmany(256):
            for row in rows:
                found = dict(zip(names, row, strict=True))
                for keyword in _LISTS:
                    if found.get(keyword):
                        found[keyword] = "\\".join(sorted(set(found[keyword].split(","))))
                yield found

    def matching_instances(self, cur: Cursor, query: Query) -> list[StoredInstance]:
        """The instances below the matches of ``query`` (what C-MOVE / C-GET send)."""
        where, params = self._where(query)
        cur.execute(
            self._q(
                "SELECT i.pk, i.sop_instance_uid, i.sop_class_uid, i.storage_key, "
                "i.transfer_syntax_stored, i.bytes_stored, i.sha256, se.series_uid, st.study_uid "
                f"FROM {FROM[IMAGE]}{where} ORDER BY st.pk, se.pk, i.pk"
            ),
            params,
        )
        names = [d[0] for d in cur.description]
        return [cast(StoredInstance, dict(zip(names, row, strict=True))) for row in cur.fetchall()]

    def delete_instance(self, cur: Cursor, pk: int) -> str | None:
        """Remove an instance's row (and its job); return its storage key."""
        row = self._one(cur, "SELECT storage_key, series_fk FROM instances WHERE pk = ?", (pk,))
        if row is None:
            return None
        cur.execute(self._q("DELETE FROM jobs WHERE instance_fk = ?"), (pk,))
        cur.execute(self._q("DELETE FROM forwards WHERE instance_fk = ?"), (pk,))
        cur.execute(self._q("DELETE FROM instances WHERE pk = ?"), (pk,))
        self._prune_series(cur, row[1])
        storage_key: str = row[0]
        return storage_key

    def instances(self, cur: Cursor) -> list[InstanceFacts]:
        return self._facts(cur, "ORDER BY i.pk", ())

    def _prune_series(self, cur: Cursor, series_pk: int) -> None:
        """Remove a series, and its study and patient, once nothing references them."""
        row = self._one(cur, "SELECT study_fk FROM series WHERE pk = ?", (series_pk,))
        if row is None or self._one(
            cur, "SELECT 1 FROM instances WHERE series_fk = ? LIMIT 1", (series_pk,)
        ):
            return
        study_pk = row[0]
        cur.execute(self._q("DELETE FROM series WHERE pk = ?"), (series_pk,))
        if self._one(cur, "SELECT 1 FROM series WHERE study_fk = ? LIMIT 1", (study_pk,)):
            return
        patient_pk = self._one(cur, "SELECT patient_fk FROM studies WHERE pk = ?", (study_pk,))[0]
        cur.execute(self._q("DELETE FROM studies WHERE pk = ?"), (study_pk,))
        if not self._one(cur, "SELECT 1 FROM studies WHERE patient_fk = ? LIMIT 1", (patient_pk,)):
            cur.execute(self._q("DELETE FROM patients WHERE pk = ?"), (patient_pk,))

    # -- read --------------------------------------------------------------------------
    def locate(self, cur: Cursor, sop_instance_uid: str) -> InstanceLocation | None:
        storage = [name for name, _ in INSTANCE_STORAGE_COLUMNS]
        row = self._one(
            cur,
            "SELECT i.sop_instance_uid, i.sop_class_uid, st.study_uid, se.series_uid, "
            + ", ".join(f"i.{c}" for c in storage)
            + ", i.compression, i.compression_note"
            + " FROM instances i JOIN series se ON se.pk = i.series_fk "
            "JOIN studies st ON st.pk = se.study_fk WHERE i.sop_instance_uid = ?",
            (sop_instance_uid,),
        )
        if row is None:
            return None
        rest = dict(zip([*storage, "compression", "compression_note"], row[4:], strict=True))
        return InstanceLocation(
            sop_instance_uid=row[0],
            sop_class_uid=row[1],
            study_uid=row[2],
            series_uid=row[3],
            storage_key=rest.pop("storage_key"),
            transfer_syntax_received=rest.pop("transfer_syntax_received"),
            transfer_syntax_stored=rest.pop("transfer_syntax_stored"),
            bytes_received=rest.pop("bytes_received"),
            bytes_stored=rest.pop("bytes_stored"),
            sha256=rest.pop("sha256"),
            extra=rest,
        )

    def instances_under(self, cur: Cursor, level: str, uid: str) -> list[Selected]:
        cur.execute(
            self._q(
                "SELECT i.pk, i.sop_instance_uid, st.study_uid, i.bytes_stored "
                "FROM instances i JOIN series se ON se.pk = i.series_fk "
                "JOIN studies st ON st.pk = se.study_fk JOIN patients p ON p.pk = st.patient_fk "
                f"WHERE {_UNDER[level]} = ? ORDER BY i.pk"
            ),
            (uid,),
        )
        return [Selected(*row) for row in cur.fetchall()]

    # -- identity (storage/owner) --------------------------------------------------------
    def ensure_identity(self, cur: Cursor, made: str) -> None:
        """Record ``made`` as the index's identity unless it has one already."""
        cur.execute(
            self._q(
                "INSERT INTO index_identity (one, index_id) VALUES (1, ?) "
                "ON CONFLICT (one) DO NOTHING"
            ),
            (made,),
        )

    def adopt_identity(self, cur: Cursor, index_id: str) -> None:
        """Take ``index_id`` as the identity (a rebuilt index takes its store's)."""
        cur.execute("DELETE FROM index_identity")
        cur.execute(
            self._q("INSERT INTO index_identity (one, index_id) VALUES (1, ?)"), (index_id,)
        )

    def identity(self, cur: Cursor) -> str | None:
        cur.execute("SELECT index_id FROM index_identity")
        row = cur.fetchone()
        return row[0] if row else None
