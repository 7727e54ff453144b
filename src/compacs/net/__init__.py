"""The DIMSE face of compacs: one module per service, each handler thin."""

from collections.abc import Callable
from typing import Any, TypeAlias

from pynetdicom.events import EventType

Handler: TypeAlias = tuple[EventType, Callable[..., Any]]
"""An event and its handler: the form of pynetdicom's ``evt_handlers`` items compacs uses
(pynetdicom's ``EventHandlerType`` also allows a third item, arguments, which compacs never
passes)."""
