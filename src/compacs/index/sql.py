"""Index logic shared by the SQL backends (SQLite now, PostgreSQL later).

Backends supply connections and the placeholder style; everything about *what* is
stored and how a C-STORE becomes rows lives here, once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from compacs.clock import utc_now
from compacs.dicom.attributes import IMAGE, INDEXED, LEVELS, PATIENT, SERIES, STUDY
from compacs.dicom.syntaxes import name_of
from compacs.index.base import (
    AddResult,
    Duplicates,
    InstanceFacts,
    InstanceLocation,
    NewInstance,
    ObjectChange,
    StoredInstance,
)
from compacs.index.compression_state import CHANGED, note_kind_sql, reason_of
from compacs.index.forward_sql import ForwardStatements
from compacs.index.schema import (
    ARCHIVE_TIER,
    INGEST_TIER,
    INSTANCE_STORAGE_COLUMNS,
    PARENT_FK,
    STUDY_PATIENT_COLUMNS,
    TABLES,
    patient_key,
)
from compacs.query import INDEXED_KEYS, Query, like_pattern

UNIQUE_COLUMN = {level: INDEXED[level][0].column for level in INDEXED}
CLAIM_LEASE = 900.0
"""Seconds after which a compression job claimed by a node that never finished it (killed,
never restarted) may be taken by another node."""


_ALIAS = {PATIENT: "p", STUDY: "st", SERIES: "se", IMAGE: "i"}
_FROM = {
    PATIENT: "patients p",
    STUDY: "studies st JOIN patients p ON p.pk = st.patient_fk",
    SERIES: "series se JOIN studies st ON st.pk = se.study_fk "
    "JOIN patients p ON p.pk = st.patient_fk",
    IMAGE: "instances i JOIN series se ON se.pk = i.series_fk "
    "JOIN studies st ON st.pk = se.study_fk JOIN patients p ON p.pk = st.patient_fk",
}


def _alias(level: str, query_level: str) -> str:
    """The table alias of ``level``'s attributes in a query at ``query_level``. Below the
    Patient level a patient attribute is the study's own (:data:`STUDY_PATIENT_COLUMNS`):
    a study is matched on, and answered with, what its instances say (PS3.4 C.6.2.1 makes
    them Study level keys in Study Root; Patient Root's lower levels answer the same)."""
    if level == PATIENT and query_level != PATIENT:
        return _ALIAS[STUDY]
    return _ALIAS[level]


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


class SqlStatements(ForwardStatements):
    """Apply index operations on a DB-API cursor. ``ph`` is the placeholder ('?' or '%s');
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

    def _one(self, cur: Any, sql: str, params: Sequence[Any]) -> Any:
        cur.execute(self._q(sql), params)
        return cur.fetchone()

    # -- add ---------------------------------------------------------------------------
    def _row_pk(
        self, cur: Any, table: str, key: str, values: dict[str, Any], parent: tuple[str, int] | None
    ) -> int:
        """pk of ``table``'s row whose ``key`` column is ``values[key]``, inserting it when
        new (first writer wins); ``parent`` is (foreign key column, pk)."""
        row = self._one(cur, f"SELECT pk FROM {table} WHERE {key} = ?", (values[key],))
        if row:
            return row[0]
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
        return row[0]

    def _level_pk(self, cur: Any, level: str, values: dict[str, Any], parent_pk: int) -> int:
        """pk of the series or instance row for ``values`` (keyed by the level's UID)."""
        return self._row_pk(
            cur, TABLES[level], UNIQUE_COLUMN[level], values, (PARENT_FK[level], parent_pk)
        )

    def _study_pk(self, cur: Any, attrs: dict[str, dict[str, Any]]) -> int:
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
            return row[0]
        patient_pk = self._row_pk(
            cur, "patients", "patient_key", {"patient_key": key, **patient}, None
        )
        self._refresh_patient(cur, patient_pk, key, patient)
        own = {c: patient[c] for c in STUDY_PATIENT_COLUMNS}
        return self._row_pk(
            cur, "studies", "study_uid", {**study, **own}, (PARENT_FK[STUDY], patient_pk)
        )

    def _refresh_patient(self, cur: Any, pk: int, key: str, patient: dict[str, Any]) -> None:
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

    def add_instance(self, cur: Any, inst: NewInstance, duplicates: Duplicates) -> AddResult:
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
                self._queue_job(cur, inst)
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
        self._queue_job(cur, inst)
        self._queue_forwards(cur, inst)
        if old_series_pk != series_pk:
            self._prune_series(cur, old_series_pk)
        return AddResult(added=True, obsolete_key=None if old_key == inst.storage_key else old_key)

    def _queue_job(self, cur: Any, inst: NewInstance) -> None:
        if inst.compress_after is None:
            return
        cur.execute(
            self._q(
                "INSERT INTO jobs (instance_fk, not_before) "
                "SELECT pk, ? FROM instances WHERE sop_instance_uid = ?"
            ),
            (inst.compress_after, inst.sop_instance_uid),
        )

    def _queue_forwards(self, cur: Any, inst: NewInstance) -> None:
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
            alias = _alias(c.level, query.level)
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

    def find(self, cur: Any, query: Query) -> Iterator[dict[str, Any]]:
        """Rows of the query level matching ``query``, with the keys it asks for."""
        depth = LEVELS.index(query.level)
        selects = [
            f"{_alias(level, query.level)}.{attr.column}"
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
        alias = _ALIAS[query.level]
        cur.execute(
            self._q(
                f"SELECT {', '.join(selects)} FROM {_FROM[query.level]}{where} ORDER BY {alias}.pk"
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

    def matching_instances(self, cur: Any, query: Query) -> list[StoredInstance]:
        """The instances below the matches of ``query`` (what C-MOVE / C-GET send)."""
        where, params = self._where(query)
        cur.execute(
            self._q(
                "SELECT i.pk, i.sop_instance_uid, i.sop_class_uid, i.storage_key, "
                "i.transfer_syntax_stored, i.bytes_stored, i.sha256, se.series_uid, st.study_uid "
                f"FROM {_FROM[IMAGE]}{where} ORDER BY st.pk, se.pk, i.pk"
            ),
            params,
        )
        names = [d[0] for d in cur.description]
        return [cast(StoredInstance, dict(zip(names, row, strict=True))) for row in cur.fetchall()]

    # -- compression jobs ------------------------------------------------------------------
    _FACTS = (
        "SELECT i.pk, i.sop_instance_uid, i.sop_class_uid, i.storage_key, "
        "i.transfer_syntax_received, i.transfer_syntax_stored, i.bytes_stored, i.calling_ae, "
        "i.called_ae, i.photometric_interpretation, i.bits_stored, i.bits_allocated, "
        "i.pixel_representation, i.compression, i.compression_note, i.tier, i.stored_at, "
        "se.modality, se.series_uid, st.study_uid "
        "FROM instances i JOIN series se ON se.pk = i.series_fk "
        "JOIN studies st ON st.pk = se.study_fk"
    )

    def _facts(self, cur: Any, where: str, params: Sequence[Any]) -> list[InstanceFacts]:
        cur.execute(self._q(f"{self._FACTS} {where}"), params)
        names = [d[0] for d in cur.description]
        return [cast(InstanceFacts, dict(zip(names, row, strict=True))) for row in cur.fetchall()]

    def claim_jobs(
        self, cur: Any, worker: str, limit: int, now: float, archive: bool = False
    ) -> list[InstanceFacts]:
        """Claim up to ``limit`` due jobs: the ingest tier's first; the archive tier's only
        when ``archive`` (the caller sees no C-STORE arriving) and no ingest job is
        pending, claimed or not, so that the archive tier never delays ingest (issue 16).
        Each instance's facts carry ``job_tier``, the tier that queued it."""
        tiers = self._claim(cur, worker, limit, now, INGEST_TIER)
        if (
            not tiers
            and archive
            and not self._one(cur, "SELECT 1 FROM jobs WHERE tier = ? LIMIT 1", (INGEST_TIER,))
        ):
            tiers = self._claim(cur, worker, limit, now, ARCHIVE_TIER)
        if not tiers:
            return []
        marks = ", ".join("?" for _ in tiers)
        facts = self._facts(cur, f"WHERE i.pk IN ({marks})", list(tiers))
        for row in facts:
            row["job_tier"] = tiers[row["pk"]]
        return facts

    def _claim(self, cur: Any, worker: str, limit: int, now: float, tier: str) -> dict[int, str]:
        """Claim due jobs of one tier: instance pk -> tier."""
        cur.execute(
            self._q(
                "SELECT instance_fk FROM jobs WHERE (claimed_by IS NULL OR claimed_at < ?) "
                f"AND not_before <= ? AND tier = ? ORDER BY not_before LIMIT ?{self.skip_locked}"
            ),
            (now - CLAIM_LEASE, now, tier, limit),
        )
        pks = [row[0] for row in cur.fetchall()]
        claimed = {}
        for pk in pks:
            cur.execute(
                self._q(
                    "UPDATE jobs SET claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
                    "WHERE instance_fk = ? AND (claimed_by IS NULL OR claimed_at < ?)"
                ),
                (worker, now, pk, now - CLAIM_LEASE),
            )
            if cur.rowcount == 1:
                claimed[pk] = tier
        return claimed

    def queue_archive(self, cur: Any, stored_before: str, limit: int, now: float) -> int:
        """Queue archive-tier jobs for up to ``limit`` instances of the ingest tier stored
        before ``stored_before`` (ISO UTC) that have no job yet, oldest first."""
        cur.execute(
            self._q(
                "INSERT INTO jobs (instance_fk, not_before, tier) "
                "SELECT i.pk, ?, ? FROM instances i WHERE i.tier = ? AND i.stored_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_fk = i.pk) "
                "ORDER BY i.stored_at LIMIT ?"
            ),
            (now, ARCHIVE_TIER, INGEST_TIER, stored_before, limit),
        )
        return cur.rowcount

    def claim_instance(self, cur: Any, sop_instance_uid: str, worker: str) -> InstanceFacts | None:
        facts = self._facts(cur, "WHERE i.sop_instance_uid = ?", (sop_instance_uid,))
        if not facts:
            return None
        cur.execute(
            self._q(
                "UPDATE jobs SET claimed_by = ?, attempts = attempts + 1 "
                "WHERE instance_fk = ? AND claimed_by IS NULL"
            ),
            (worker, facts[0]["pk"]),
        )
        return facts[0] if cur.rowcount == 1 else None

    def finish_job(
        self,
        cur: Any,
        pk: int,
        old_key: str,
        change: ObjectChange | None,
        state: str,
        note: str | None,
        tier: str | None = None,
    ) -> bool:
        """Record a job's outcome; ``tier`` (when given) is the tier the instance is now
        stored by (:data:`ARCHIVE_TIER` once the archive tier ran on it)."""
        cur.execute(self._q("DELETE FROM jobs WHERE instance_fk = ?"), (pk,))
        if change is None:  # an outcome for the object processed, not for a newer one
            cur.execute(
                self._q(
                    "UPDATE instances SET compression = ?, compression_note = ?, "
                    "tier = COALESCE(?, tier) WHERE pk = ? AND storage_key = ?"
                ),
                (state, note, tier, pk, old_key),
            )
            return True
        cur.execute(
            self._q(
                "UPDATE instances SET storage_key = ?, transfer_syntax_stored = ?, "
                "bytes_stored = ?, sha256 = ?, stored_at = ?, compression = ?, "
                "compression_note = ?, tier = COALESCE(?, tier) "
                "WHERE pk = ? AND storage_key = ?"
            ),
            (
                change.storage_key,
                change.transfer_syntax,
                change.bytes_stored,
                change.sha256,
                utc_now(),
                state,
                note,
                tier,
                pk,
                old_key,
            ),
        )
        if cur.rowcount == 1:
            return True
        # A retried finish whose first commit went through (the connection broke after
        # it): the instance already references the new object, which must stay.
        row = self._one(cur, "SELECT storage_key FROM instances WHERE pk = ?", (pk,))
        return row is not None and row[0] == change.storage_key

    def delete_instance(self, cur: Any, pk: int) -> str | None:
        """Remove an instance's row (and its job); return its storage key."""
        row = self._one(cur, "SELECT storage_key, series_fk FROM instances WHERE pk = ?", (pk,))
        if row is None:
            return None
        cur.execute(self._q("DELETE FROM jobs WHERE instance_fk = ?"), (pk,))
        cur.execute(self._q("DELETE FROM forwards WHERE instance_fk = ?"), (pk,))
        cur.execute(self._q("DELETE FROM instances WHERE pk = ?"), (pk,))
        self._prune_series(cur, row[1])
        return row[0]

    def release_claims(self, cur: Any, node: str) -> int:
        """Free the jobs this node's workers held when it stopped (other nodes' claims
        stay; theirs expire after :data:`CLAIM_LEASE` if they never come back)."""
        cur.execute(
            self._q(
                "UPDATE jobs SET claimed_by = NULL, claimed_at = NULL "
                "WHERE substr(claimed_by, 1, length(?)) = ?"
            ),
            (f"{node}:", f"{node}:"),
        )
        return cur.rowcount

    def instances(self, cur: Any) -> list[InstanceFacts]:
        return self._facts(cur, "ORDER BY i.pk", ())

    def _prune_series(self, cur: Any, series_pk: int) -> None:
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
    def locate(self, cur: Any, sop_instance_uid: str) -> InstanceLocation | None:
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

    def stats(self, cur: Any) -> dict[str, Any]:
        counts = {}
        for name, table in (
            ("patients", "patients"),
            ("studies", "studies"),
            ("series", "series"),
            ("instances", "instances"),
        ):
            counts[name] = self._one(cur, f"SELECT COUNT(*) FROM {table}", ())[0]
        received, stored = self._one(
            cur,
            "SELECT COALESCE(SUM(bytes_received), 0), COALESCE(SUM(bytes_stored), 0) "
            "FROM instances",
            (),
        )
        groups = self.storage_groups(cur)
        by_modality = _grouped(groups, lambda g: g["modality"] or "(none)")
        by_syntax = _grouped(groups, lambda g: g["transfer_syntax"])
        for uid, entry in by_syntax.items():
            by_syntax[uid] = {"name": name_of(uid), **entry}
        by_tier = _grouped(groups, lambda g: g["tier"])
        pending = self._one(cur, "SELECT COUNT(*) FROM jobs", ())[0]
        cur.execute("SELECT COALESCE(compression, 'untouched'), COUNT(*) FROM instances GROUP BY 1")
        compression = {state: int(n) for state, n in cur.fetchall()}
        untouched = self._untouched_by_reason(cur)
        return {
            **counts,
            "bytes_received": int(received),
            "bytes_stored": int(stored),
            "ratio": _ratio(received, stored),
            "pending": int(pending),
            "compression": compression,
            "untouched_by_reason": untouched,
            "by_modality": by_modality,
            "by_transfer_syntax": by_syntax,
            "by_tier": by_tier,
            "groups": groups,
            "forwarding": self.forward_counts(cur),
            "forwarding_problems": self.forward_problems(cur),
        }

    def storage_groups(self, cur: Any) -> list[dict[str, Any]]:
        """Instances and bytes received, stored and saved per (tier, stored transfer
        syntax, modality): the rows ``compacs stats`` and the dashboard group by codec,
        modality and tier (issue 16)."""
        cur.execute(
            "SELECT i.tier, i.transfer_syntax_stored, COALESCE(se.modality, ''), COUNT(*), "
            "SUM(i.bytes_received), SUM(i.bytes_stored) "
            "FROM instances i JOIN series se ON se.pk = i.series_fk "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        return [
            {"tier": tier, "transfer_syntax": ts, "modality": modality, **_bytes_entry(n, r, s)}
            for tier, ts, modality, n, r, s in cur.fetchall()
        ]

    def _untouched_by_reason(self, cur: Any) -> dict[str, int]:
        """Instances stored as received and not waiting for compression, counted by reason
        (:func:`compacs.index.compression_state.reason_of`), most frequent first."""
        changed = ", ".join(f"'{state}'" for state in CHANGED)
        cur.execute(
            f"SELECT i.compression, {note_kind_sql('i.compression_note')}, COUNT(*) "
            f"FROM instances i WHERE (i.compression IS NULL OR i.compression NOT IN ({changed})) "
            "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_fk = i.pk) GROUP BY 1, 2"
        )
        counts: Counter[str] = Counter()
        for state, note, n in cur.fetchall():
            counts[reason_of(state, note)] += int(n)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    # -- the admin's window (compacs.web) ---------------------------------------------
    def sizes(self, cur: Any, level: str, uid: str) -> dict[str, Any]:
        """Instances, bytes and stored syntaxes under one patient/study/series/instance."""
        where = f"{_alias(level, IMAGE)}.{UNIQUE_COLUMN[level]} = ?"
        cur.execute(
            self._q(
                "SELECT i.transfer_syntax_stored, COUNT(*), SUM(i.bytes_received), "
                f"SUM(i.bytes_stored) FROM {_FROM[IMAGE]} WHERE {where} "
                "GROUP BY i.transfer_syntax_stored ORDER BY 1"
            ),
            (uid,),
        )
        rows = cur.fetchall()
        n = sum(int(r[1]) for r in rows)
        received = sum(int(r[2]) for r in rows)
        stored = sum(int(r[3]) for r in rows)
        return {
            **_bytes_entry(n, received, stored),
            "by_transfer_syntax": {
                ts: {"name": name_of(ts), **_bytes_entry(c, r, s)} for ts, c, r, s in rows
            },
        }

    def received_per_day(self, cur: Any) -> list[dict[str, Any]]:
        """Bytes received and stored per UTC day of receipt (received_at), oldest first."""
        cur.execute(
            "SELECT substr(received_at, 1, 10), COUNT(*), SUM(bytes_received), "
            "SUM(bytes_stored) FROM instances GROUP BY 1 ORDER BY 1"
        )
        return [{"day": day, **_bytes_entry(n, r, s)} for day, n, r, s in cur.fetchall()]

    # -- identity (storage/owner) --------------------------------------------------------
    def ensure_identity(self, cur: Any, made: str) -> None:
        """Record ``made`` as the index's identity unless it has one already."""
        cur.execute(
            self._q(
                "INSERT INTO index_identity (one, index_id) VALUES (1, ?) "
                "ON CONFLICT (one) DO NOTHING"
            ),
            (made,),
        )

    def adopt_identity(self, cur: Any, index_id: str) -> None:
        """Take ``index_id`` as the identity (a rebuilt index takes its store's)."""
        cur.execute("DELETE FROM index_identity")
        cur.execute(
            self._q("INSERT INTO index_identity (one, index_id) VALUES (1, ?)"), (index_id,)
        )

    def identity(self, cur: Any) -> str | None:
        cur.execute("SELECT index_id FROM index_identity")
        row = cur.fetchone()
        return row[0] if row else None


def _ratio(received: int, stored: int) -> float:
    return round(float(received) / float(stored), 3) if stored else 1.0


def _bytes_entry(n: int, received: int, stored: int) -> dict[str, Any]:
    return {
        "instances": int(n),
        "bytes_received": int(received),
        "bytes_stored": int(stored),
        "bytes_saved": int(received) - int(stored),
        "ratio": _ratio(received, stored),
    }


def _grouped(
    groups: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]
) -> dict[str, dict[str, Any]]:
    """:meth:`SqlStatements.storage_groups` rows summed by ``key``, sorted by key."""
    sums: dict[str, list[int]] = {}
    for g in groups:
        total = sums.setdefault(key(g), [0, 0, 0])
        total[0] += g["instances"]
        total[1] += g["bytes_received"]
        total[2] += g["bytes_stored"]
    return {k: _bytes_entry(*sums[k]) for k in sorted(sums)}
