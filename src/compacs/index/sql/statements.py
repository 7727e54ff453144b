"""The index's SQL, one class composed of the statements of each role of the index
(:mod:`compacs.index.base`: the catalogue, the compression and forward queues, the
reports), all on a DB-API cursor in the backend's placeholder style."""

from __future__ import annotations

from compacs.index.sql.catalogue import CatalogueStatements
from compacs.index.sql.compression import CompressionStatements
from compacs.index.sql.forwards import ForwardStatements
from compacs.index.sql.reports import ReportStatements


class SqlStatements(
    CatalogueStatements, CompressionStatements, ForwardStatements, ReportStatements
):
    """Every statement of the index: what a backend runs in its write path or on a reader.
    A new instance's row, compression job and deliveries are written in one transaction
    (:meth:`CatalogueStatements.add_instance`)."""
