"""The process-wide settings compacs runs pydicom and pynetdicom with: one place, applied
by each entry point (``compacs.cli.main`` for every command, :class:`compacs.node.Node`
for a node built in-process)."""

from __future__ import annotations

import pydicom.config
from pynetdicom import _config as pynetdicom_config


def configure(log_identifiers: bool = False) -> None:
    """Set the libraries' globals. ``log_identifiers``: the admin asked for DEBUG with
    patient data (``compacs.logs.configure``'s condition)."""
    # compacs validates what it relies on itself (UIDs, structure); pydicom's per-value
    # validation on read would only slow the C-STORE path and flood the log, and the
    # admin commands read stored files as the node does
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # C-MOVE/C-GET send a stored file as it is by handing pynetdicom its path: stream
    # the file's data set instead of decoding and re-encoding it
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom decodes and pretty-prints every C-FIND/C-MOVE/C-GET identifier for
    # its log whatever the level (~0.2 ms a request, more per response); those dumps
    # hold patient data, which compacs logs only at DEBUG with log_phi (compacs.logs)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = log_identifiers
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = log_identifiers
    pynetdicom_config.LOG_HANDLER_LEVEL = pynetdicom_log_handlers(log_identifiers)


def pynetdicom_log_handlers(verbose: bool) -> str:
    """pynetdicom's ``LOG_HANDLER_LEVEL`` for the node's associations.

    With "standard" every association binds four handlers (EVT_PDU_RECV/SENT,
    EVT_DIMSE_RECV/SENT) that describe each PDU and DIMSE message for pynetdicom's log at
    INFO and DEBUG, and nothing above (pynetdicom ``_handlers.standard_*``): the events
    are then built, the A-ASSOCIATE-RQ/AC summaries formatted and the association's lock
    taken for every PDU, whatever the logger's level. compacs sets that logger to WARNING
    unless the admin asked for DEBUG with patient data (``compacs.logs.configure``, the
    same condition as ``verbose``): there "none" loses no line and saves that work on
    every association's set-up, each message and its release (issue 15)."""
    return "standard" if verbose else "none"
