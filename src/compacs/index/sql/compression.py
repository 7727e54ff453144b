"""The compression queue's statements: a job queued with a new instance, claimed by a
worker of any node (with a lease), finished with the object it switched to, archive-tier
jobs queued for old instances (issue 16), claims released at a node's stop."""

from __future__ import annotations

from compacs.clock import utc_now
from compacs.index.base import InstanceFacts, NewInstance, ObjectChange
from compacs.index.schema import ARCHIVE_TIER, INGEST_TIER
from compacs.index.sql.common import Cursor, Statements

CLAIM_LEASE = 900.0
"""Seconds after which a compression job claimed by a node that never finished it (killed,
never restarted) may be taken by another node."""


class CompressionStatements(Statements):
    """The ``jobs`` rows: one per instance waiting for its compression (or archive tier)."""

    def queue_job(self, cur: Cursor, inst: NewInstance) -> None:
        """Queue a just-indexed instance's compression job, when its policy asks for one
        (same transaction as its row)."""
        if inst.compress_after is None:
            return
        cur.execute(
            self._q(
                "INSERT INTO jobs (instance_fk, not_before) "
                "SELECT pk, ? FROM instances WHERE sop_instance_uid = ?"
            ),
            (inst.compress_after, inst.sop_instance_uid),
        )

    def claim_jobs(
        self, cur: Cursor, worker: str, limit: int, now: float, archive: bool = False
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

    def _claim(self, cur: Cursor, worker: str, limit: int, now: float, tier: str) -> dict[int, str]:
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

    def queue_archive(self, cur: Cursor, stored_before: str, limit: int, now: float) -> int:
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

    def claim_instance(
        self, cur: Cursor, sop_instance_uid: str, worker: str
    ) -> InstanceFacts | None:
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
        cur: Cursor,
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

    def release_claims(self, cur: Cursor, node: str) -> int:
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
