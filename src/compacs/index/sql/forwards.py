"""The forward queue's statements (the gateway's durable retry queue), shared by backends.

One ``forwards`` row per instance and destination. States:

- ``pending``: waiting to be sent (``not_before`` is the next attempt; with
  ``wait_compression`` also until the instance's compression job is gone);
- ``sending``: claimed by a forwarder;
- ``committing``: delivered, waiting for the Storage Commitment report (PS3.4 J.3.3);
- ``done``: delivered (and committed when asked);
- ``failed``: parked after the last attempt, until ``compacs queue retry``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from compacs.clock import utc_now
from compacs.index.base import Forward, ForwardItem, ForwardOutcome
from compacs.index.forward_state import ForwardState
from compacs.index.sql.common import Cursor, Statements

# the states as SQL string literals
_PENDING, _SENDING = f"'{ForwardState.PENDING}'", f"'{ForwardState.SENDING}'"
_COMMITTING, _DONE = f"'{ForwardState.COMMITTING}'", f"'{ForwardState.DONE}'"
_FAILED = f"'{ForwardState.FAILED}'"

_ITEM = (
    "SELECT f.pk, f.destination, f.syntaxes, f.options, f.state, f.attempts, f.not_before, "
    "f.transaction_uid, f.transfer_syntax_sent, f.bytes_sent, f.last_error, f.updated_at, "
    "i.pk AS instance_pk, i.sop_instance_uid, i.sop_class_uid, i.storage_key, "
    "i.transfer_syntax_stored, i.bytes_stored, se.series_uid, st.study_uid "
    "FROM forwards f JOIN instances i ON i.pk = f.instance_fk "
    "JOIN series se ON se.pk = i.series_fk JOIN studies st ON st.pk = se.study_fk"
)
# a pending item is due when its time has come and, if it waits for compression, the
# instance has no compression job left
_DUE = (
    f"f.state = {_PENDING} AND f.not_before <= ? AND (f.wait_compression = 0 OR NOT EXISTS "
    "(SELECT 1 FROM jobs j WHERE j.instance_fk = f.instance_fk))"
)
_AFRESH = (
    "DO UPDATE SET syntaxes = excluded.syntaxes, options = excluded.options, "
    "wait_compression = excluded.wait_compression, retain_days = excluded.retain_days, "
    f"state = {_PENDING}, not_before = excluded.not_before, attempts = 0, claimed_by = NULL, "
    "last_error = NULL, updated_at = excluded.updated_at"
)


def _options(forward: Forward) -> str:
    return json.dumps(
        {"commit": forward.commit, "lossy": forward.lossy, "codec_options": forward.codec_options}
    )


def _item(names: Sequence[str], row: Sequence[Any]) -> ForwardItem:
    """The row of :data:`_ITEM` as a :class:`ForwardItem`: its syntaxes as a tuple, its
    options' JSON (:func:`_options`) as keys of their own."""
    item = dict(zip(names, row, strict=True))
    item["syntaxes"] = tuple(item["syntaxes"].split())
    item.update(json.loads(item.pop("options")))
    return cast(ForwardItem, item)  # the columns of _ITEM and the keys of _options


class ForwardStatements(Statements):
    """The ``forwards`` rows: queued, claimed, finished, committed, listed, retried."""

    def _rows(self, cur: Cursor, sql: str, params: Sequence[Any]) -> list[ForwardItem]:
        cur.execute(self._q(sql), params)
        names = [d[0] for d in cur.description]
        return [_item(names, row) for row in cur.fetchall()]

    def queue_forwards(self, cur: Cursor, instance_pk: int, forwards: Sequence[Forward]) -> None:
        """Queue deliveries of a just-indexed instance (same transaction as its row)."""
        cur.execute(self._q("DELETE FROM forwards WHERE instance_fk = ?"), (instance_pk,))
        for forward in forwards:  # the first of two for one destination wins
            self._insert(cur, instance_pk, forward, "DO NOTHING")

    def enqueue_forwards(self, cur: Cursor, instance_pks: list[int], forward: Forward) -> int:
        for pk in instance_pks:  # an existing item for the destination starts afresh
            self._insert(cur, pk, forward, _AFRESH)
        return len(instance_pks)

    def _insert(self, cur: Cursor, instance_pk: int, forward: Forward, on_conflict: str) -> None:
        stamp = utc_now()
        cur.execute(
            self._q(
                "INSERT INTO forwards (instance_fk, destination, syntaxes, options, "
                "wait_compression, retain_days, state, not_before, created_at, updated_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, {_PENDING}, ?, ?, ?) "
                f"ON CONFLICT (instance_fk, destination) {on_conflict}"
            ),
            (
                instance_pk,
                forward.destination,
                " ".join(forward.syntaxes),
                _options(forward),
                int(forward.wait_compression),
                forward.retain_days,
                datetime.now(UTC).timestamp(),
                stamp,
                stamp,
            ),
        )

    def claim_forwards(
        self,
        cur: Cursor,
        worker: str,
        now: float,
        limit: int,
        skip: frozenset[str],
        only: str | None = None,
    ) -> list[ForwardItem]:
        excluded = sorted(skip)
        not_in = f" AND f.destination NOT IN ({', '.join('?' for _ in excluded)})" if skip else ""
        if only is not None:
            not_in += " AND f.destination = ?"
            excluded.append(only)
        first = self._one(
            cur,
            f"SELECT f.destination, se.study_fk FROM forwards f "
            f"JOIN instances i ON i.pk = f.instance_fk JOIN series se ON se.pk = i.series_fk "
            f"WHERE {_DUE}{not_in} ORDER BY f.not_before, f.pk LIMIT 1",
            (now, *excluded),
        )
        if first is None:
            return []
        destination, study_pk = first
        items = self._rows(
            cur,
            f"{_ITEM} WHERE {_DUE} AND f.destination = ? AND st.pk = ? ORDER BY f.pk LIMIT ?",
            (now, destination, study_pk, limit),
        )
        stamp = utc_now()
        claimed = []
        for item in items:  # another node may have claimed some meanwhile (shared index)
            cur.execute(
                self._q(
                    f"UPDATE forwards SET state = {_SENDING}, claimed_by = ?, "
                    f"attempts = attempts + 1, updated_at = ? WHERE pk = ? AND state = {_PENDING}"
                ),
                (worker, stamp, item["pk"]),
            )
            if cur.rowcount == 1:
                item["attempts"] += 1
                claimed.append(item)
        return claimed

    def finish_forwards(self, cur: Cursor, outcomes: Sequence[ForwardOutcome]) -> None:
        stamp = utc_now()
        for o in outcomes:
            cur.execute(
                self._q(
                    "UPDATE forwards SET state = ?, not_before = ?, last_error = ?, "
                    "transfer_syntax_sent = COALESCE(?, transfer_syntax_sent), "
                    "bytes_sent = COALESCE(?, bytes_sent), "
                    "transaction_uid = COALESCE(?, transaction_uid), claimed_by = NULL, "
                    "updated_at = ? WHERE pk = ?"
                ),
                (
                    o["state"],
                    o.get("not_before", 0.0),
                    o.get("error"),
                    o.get("syntax"),
                    o.get("bytes"),
                    o.get("transaction_uid"),
                    stamp,
                    o["pk"],
                ),
            )

    def defer_destination(self, cur: Cursor, destination: str, until: float) -> None:
        cur.execute(
            self._q(
                "UPDATE forwards SET not_before = ? "
                f"WHERE destination = ? AND state = {_PENDING} AND not_before < ?"
            ),
            (until, destination, until),
        )

    def commitment_result(
        self, cur: Cursor, transaction_uid: str, committed: set[str], failed: set[str]
    ) -> int:
        rows = self._rows(
            cur,
            f"{_ITEM} WHERE f.transaction_uid = ? AND f.state = {_COMMITTING}",
            (transaction_uid,),
        )
        stamp = utc_now()
        changed = 0
        for item in rows:
            uid = item["sop_instance_uid"]
            if uid in committed:
                state, error = ForwardState.DONE, None
            elif uid in failed:
                state, error = ForwardState.PENDING, "the destination did not commit it"
            else:
                continue
            cur.execute(
                self._q(
                    "UPDATE forwards SET state = ?, last_error = ?, not_before = 0, "
                    "updated_at = ? WHERE pk = ?"
                ),
                (state, error, stamp, item["pk"]),
            )
            changed += 1
        return changed

    def forward_items(
        self, cur: Cursor, state: str | None = None, limit: int = 1000
    ) -> list[ForwardItem]:
        where, params = ("WHERE f.state = ?", [state]) if state else ("", [])
        return self._rows(cur, f"{_ITEM} {where} ORDER BY f.pk LIMIT ?", (*params, limit))

    def _selection(self, pks: list[int] | None, states: tuple[str, ...]) -> tuple[str, list[Any]]:
        clauses = [f"state IN ({', '.join('?' for _ in states)})"]
        params: list[Any] = list(states)
        if pks is not None:
            clauses.append(f"pk IN ({', '.join('?' for _ in pks) or 'NULL'})")
            params += pks
        return " AND ".join(clauses), params

    def requeue_forwards(self, cur: Cursor, pks: list[int] | None, states: tuple[str, ...]) -> int:
        where, params = self._selection(pks, states)
        cur.execute(
            self._q(
                f"UPDATE forwards SET state = {_PENDING}, attempts = 0, not_before = 0, "
                f"claimed_by = NULL, updated_at = ? WHERE {where}"
            ),
            (utc_now(), *params),
        )
        return cur.rowcount

    def drop_forwards(self, cur: Cursor, pks: list[int] | None, states: tuple[str, ...]) -> int:
        where, params = self._selection(pks, states)
        cur.execute(self._q(f"DELETE FROM forwards WHERE {where}"), params)
        return cur.rowcount

    def release_forward_claims(self, cur: Cursor, stale_before: float, node: str | None) -> int:
        released = 0
        if node is not None:  # its own start-up: what it was sending when it stopped
            cur.execute(
                self._q(
                    f"UPDATE forwards SET state = {_PENDING}, claimed_by = NULL "
                    f"WHERE state = {_SENDING} AND substr(claimed_by, 1, length(?)) = ?"
                ),
                (f"{node}:", f"{node}:"),
            )
            released = cur.rowcount
        cutoff = datetime.fromtimestamp(stale_before, UTC).isoformat(timespec="milliseconds")
        cur.execute(  # a node that died sending and never came back
            self._q(
                f"UPDATE forwards SET state = {_PENDING}, claimed_by = NULL "
                f"WHERE state = {_SENDING} AND updated_at < ?"
            ),
            (cutoff,),
        )
        released += cur.rowcount
        cur.execute(
            self._q(
                f"UPDATE forwards SET state = {_PENDING}, not_before = 0, "
                "last_error = 'no Storage Commitment report in time' "
                f"WHERE state = {_COMMITTING} AND updated_at < ?"
            ),
            (cutoff,),
        )
        return released + cur.rowcount

    def retention_due(self, cur: Cursor, now: float) -> list[int]:
        """Instances with deliveries, all done, every one with a retention period, and
        received longer ago than the longest of them."""
        cur.execute(
            "SELECT i.pk, i.received_at, MAX(f.retain_days) FROM instances i "
            "JOIN forwards f ON f.instance_fk = i.pk GROUP BY i.pk, i.received_at "
            f"HAVING SUM(CASE WHEN f.state = {_DONE} AND f.retain_days IS NOT NULL "
            "THEN 0 ELSE 1 END) = 0"
        )
        due = []
        for pk, received_at, days in cur.fetchall():
            received = datetime.fromisoformat(received_at)
            if received + timedelta(days=float(days)) <= datetime.fromtimestamp(now, UTC):
                due.append(pk)
        return due

    def forward_problems(self, cur: Cursor) -> dict[str, Any]:
        """Per destination, the items not yet delivered whose last attempt failed, grouped
        by that attempt's error: the queue's own state (a delivery clears ``last_error``),
        so a problem shows exactly as long as it lasts. ``{destination: {"items": n,
        "errors": [{"error", "items", "last_attempt"}, newest first]}}``."""
        cur.execute(
            "SELECT destination, last_error, COUNT(*), MAX(updated_at) FROM forwards "
            f"WHERE last_error IS NOT NULL AND state IN ({_PENDING}, {_SENDING}, {_FAILED}) "
            "GROUP BY destination, last_error ORDER BY 1, 4 DESC"
        )
        out: dict[str, Any] = {}
        for destination, error, n, last in cur.fetchall():
            entry = out.setdefault(destination, {"items": 0, "errors": []})
            entry["items"] += int(n)
            entry["errors"].append({"error": error, "items": int(n), "last_attempt": last})
        return out

    def forward_counts(self, cur: Cursor) -> dict[str, Any]:
        cur.execute(
            "SELECT destination, state, COUNT(*), COALESCE(SUM(bytes_sent), 0) FROM forwards "
            "GROUP BY destination, state ORDER BY 1, 2"
        )
        out: dict[str, Any] = {}
        for destination, state, n, sent in cur.fetchall():
            entry = out.setdefault(destination, {"bytes_sent": 0})
            entry[state] = int(n)
            entry["bytes_sent"] += int(sent)
        return out
