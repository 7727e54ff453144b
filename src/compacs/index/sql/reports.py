"""The reports' statements: stats (one snapshot of every figure), sizes under one
patient/study/series/instance, storage groups (tier, stored syntax, modality; issue 16)
and bytes per day of receipt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from compacs.dicom.attributes import IMAGE
from compacs.dicom.syntaxes import name_of
from compacs.index.compression_state import CHANGED, note_kind_sql, reason_of
from compacs.index.sql.common import FROM, UNIQUE_COLUMN, Cursor, Statements, alias_of


class ReportStatements(Statements):
    """Mixed into :class:`~compacs.index.sql.statements.SqlStatements`, which provides the
    forward queue's figures (``forward_counts``, ``forward_problems``)."""

    forward_counts: Callable[[Any], dict[str, Any]]
    forward_problems: Callable[[Any], dict[str, Any]]

    def stats(self, cur: Cursor) -> dict[str, Any]:
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

    def storage_groups(self, cur: Cursor) -> list[dict[str, Any]]:
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

    def _untouched_by_reason(self, cur: Cursor) -> dict[str, int]:
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
    def sizes(self, cur: Cursor, level: str, uid: str) -> dict[str, Any]:
        """Instances, bytes and stored syntaxes under one patient/study/series/instance."""
        where = f"{alias_of(level, IMAGE)}.{UNIQUE_COLUMN[level]} = ?"
        cur.execute(
            self._q(
                "SELECT i.transfer_syntax_stored, COUNT(*), SUM(i.bytes_received), "
                f"SUM(i.bytes_stored) FROM {FROM[IMAGE]} WHERE {where} "
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

    def received_per_day(self, cur: Cursor) -> list[dict[str, Any]]:
        """Bytes received and stored per UTC day of receipt (received_at), oldest first."""
        cur.execute(
            "SELECT substr(received_at, 1, 10), COUNT(*), SUM(bytes_received), "
            "SUM(bytes_stored) FROM instances GROUP BY 1 ORDER BY 1"
        )
        return [{"day": day, **_bytes_entry(n, r, s)} for day, n, r, s in cur.fetchall()]


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
    """:meth:`ReportStatements.storage_groups` rows summed by ``key``, sorted by key."""
    sums: dict[str, list[int]] = {}
    for g in groups:
        total = sums.setdefault(key(g), [0, 0, 0])
        total[0] += g["instances"]
        total[1] += g["bytes_received"]
        total[2] += g["bytes_stored"]
    return {k: _bytes_entry(*sums[k]) for k in sorted(sums)}
