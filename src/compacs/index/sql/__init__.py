"""The index in SQL, shared by the SQLite and PostgreSQL backends, one module per concern:

- :mod:`.catalogue`: instances in and out, C-FIND, locate, select, delete, identity;
- :mod:`.compression`: the compression queue (jobs queued, claimed, finished, archived);
- :mod:`.forwards`: the forward queue (deliveries to other nodes);
- :mod:`.reports`: stats, sizes, storage groups, bytes per day;
- :mod:`.common`: placeholders and the four levels' joins every concern uses;
- :mod:`.statements`: :class:`SqlStatements`, the four composed;
- :mod:`.backend`: :class:`SqlIndex`, the Index methods each backend inherits (each one
  statement run in the group commit or on a reader), and the bulk loader.
"""

from compacs.index.sql.backend import SqlIndex
from compacs.index.sql.statements import SqlStatements

__all__ = ["SqlIndex", "SqlStatements"]
