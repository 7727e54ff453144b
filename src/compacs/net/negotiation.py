"""Which transfer syntax the node accepts per presentation context (PS3.8 9.3.2.2, 9.3.3.2).

pynetdicom's acceptor (``presentation.negotiate_as_acceptor``) takes, for each proposed
context, the first syntax of the *acceptor's* list for that abstract syntax that the
requestor proposed. A fixed list cannot serve every requestor: a modality proposing
[JPEG-LS, Explicit] should keep its JPEG-LS, one proposing [Implicit, Explicit]
(pynetdicom's default) should get Explicit, whose VRs keep private attributes readable.
So at EVT_REQUESTED, before negotiation, the acceptor's contexts are replaced for this
association by contexts for the abstract syntaxes the requestor proposed, each listing
the syntaxes it proposed in :func:`compacs.dicom.syntaxes.acceptance_order`.

Only syntaxes the node supports for that abstract syntax are listed, and each context keeps
the node's SCU/SCP roles; contexts the access control removed (net/access.py) stay removed,
whichever of the two EVT_REQUESTED handlers runs first, as both only narrow
``acceptor.supported_contexts``. The node's shared context objects are never modified
(:class:`SharedContexts` shares them between associations): new ones are built, and
shared in their turn.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from compacs.dicom.syntaxes import acceptance_order


class SharedContexts(list[PresentationContext]):
    """The acceptor's supported contexts, shared by every association, with an index by
    abstract syntax built once.

    pynetdicom deep-copies the acceptor's supported contexts for every association: with
    ~210 SOP classes x 20 transfer syntaxes that took ~40 ms of each association's setup.
    Negotiation (presentation.negotiate_as_acceptor) only reads them, so a copy is a new
    list of the same context objects, sharing the index; EVT_REQUESTED handlers that
    narrow or reorder them (:func:`prefer_on_request`, net/access.py) build new lists and
    contexts. The index spares :func:`ordered_contexts` a dictionary of all ~210 contexts
    per association (~0.1 ms of its set-up, issue 15)."""

    def __init__(
        self,
        contexts: Iterable[PresentationContext],
        index: dict[str, PresentationContext] | None = None,
    ) -> None:
        super().__init__(contexts)
        self._index = index if index is not None else _by_abstract(self)

    def __deepcopy__(self, memo: dict[int, object]) -> SharedContexts:
        return SharedContexts(self, self._index)

    def by_abstract(self) -> dict[str, PresentationContext]:
        """Context by abstract syntax UID (rebuilt should the list have been changed)."""
        if len(self._index) != len(self):
            self._index = _by_abstract(self)
        return self._index


def _by_abstract(contexts: Iterable[PresentationContext]) -> dict[str, PresentationContext]:
    return {str(cx.abstract_syntax): cx for cx in contexts}


def ordered_contexts(
    proposed: Iterable[PresentationContext], supported: Iterable[PresentationContext]
) -> list[PresentationContext]:
    """Acceptor contexts for the abstract syntaxes of ``proposed`` that ``supported`` has,
    their transfer syntaxes in the order the node prefers for these proposals."""
    if isinstance(supported, SharedContexts):
        by_abstract = supported.by_abstract()
    else:
        by_abstract = _by_abstract(supported)
    proposals: dict[str, list[list[str]]] = {}
    for cx in proposed:
        uid = str(cx.abstract_syntax)
        if uid in by_abstract:
            proposals.setdefault(uid, []).append([str(ts) for ts in cx.transfer_syntax])
    return [_ordered(by_abstract[uid], syntaxes) for uid, syntaxes in proposals.items()]


def _ordered(node: PresentationContext, proposals: list[list[str]]) -> PresentationContext:
    """``node``'s context with the proposed syntaxes it supports, most preferred first
    (``node`` itself when it supports none: negotiation then refuses the context with
    reason 4, transfer syntaxes not supported)."""
    supported = {str(ts) for ts in node.transfer_syntax}
    order = tuple(uid for uid in acceptance_order(proposals) if uid in supported)
    if not order:
        return node
    return _context(str(node.abstract_syntax), order, node.scu_role, node.scp_role)


@functools.lru_cache(maxsize=4096)
def _context(
    abstract_syntax: str, order: tuple[str, ...], scu_role: bool | None, scp_role: bool | None
) -> PresentationContext:
    """A context built once per distinct order and shared by associations, as the node's
    own are: pynetdicom validates every UID it is given (~40 us a context, 5 ms for a
    requestor proposing 120), and negotiation only reads the contexts."""
    cx = PresentationContext()
    cx.abstract_syntax = abstract_syntax
    cx.transfer_syntax = list(order)
    cx.scu_role, cx.scp_role = scu_role, scp_role
    return cx


def prefer_on_request(event: Event) -> None:
    """EVT_REQUESTED: this association's acceptor contexts, ordered for what was proposed."""
    assoc = event.assoc
    if assoc.is_rejected or assoc.is_aborted or assoc.requestor.primitive is None:
        return
    proposed = assoc.requestor.primitive.presentation_context_definition_list
    assoc.acceptor.supported_contexts = ordered_contexts(
        proposed, assoc.acceptor.supported_contexts
    )
