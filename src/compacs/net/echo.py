"""Verification SOP Class SCP (PS3.4 Annex A): C-ECHO."""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.events import Event

from compacs.dicom.status import Status


def handle_echo(event: Event) -> int:
    return Status.SUCCESS


HANDLERS = [(evt.EVT_C_ECHO, handle_echo)]
