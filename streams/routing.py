"""The pipeline's stages as message handlers, for running them on separate partitions.

Topology (each arrow a topic, keyed as shown):

    events ─(client key)─▶ client_handle ─(project)─▶ identity_handle ─(person key)─▶ person_handle
                               │ event and visit rows        │ identity rows          │ conversion and attribution rows
                               ▼                             ▼                        ▼
                                              rows topic ─▶ sink ─▶ ClickHouse

The hard part: the client ids of one person hash to different partitions, and a person can
merge with another at any time. So identity is decided in one place per project (a union-find
is small and the stage does little work per message), and person state is re-keyed by person id.
A merge sends every folded-in person an ``absorb`` order; that person's partition hands its
state to the survivor (``transfer``) and leaves a forwarding address (``Moved``) for anything
still in flight to it. Forwarding chains end, because the survivor of a merge is always the
smallest person id. Views and transfers may arrive in any order and more than once (the person
stage keeps the newest view of each client), so nothing here needs ordering across partitions.
Handlers are pure: they take the state slot and a message and return the new slot, rows to
write and messages to send.
"""

from __future__ import annotations

from typing import NamedTuple

from .identity import IdentityGraph
from .model import Event, Output
from .pipeline import EVER, ClientState, ClientView, Person, client_step, identity_step, person_credit
from .rules import ProjectRules


class Moved(NamedTuple):
    """A person folded into another: messages to it go on to ``into``."""

    into: str


class ToPerson(NamedTuple):
    kind: str  # "view" | "absorb" | "transfer"
    project_id: str
    person_id: str  # the addressee
    view: ClientView | None = None
    into: str = ""  # absorb: the surviving person
    state: Person | None = None  # transfer: the folded-in person's state

    @property
    def key(self) -> str:
        return f"{self.project_id}:{self.person_id}"


def client_handle(slot: ClientState | None, events: list[Event], rules: ProjectRules, click_ids=None) -> tuple[ClientState, Output, ClientView | None]:
    """Events of one client. Returns the new slot, rows, and the view for the identity stage."""
    slot = slot or ClientState()
    rows, view = client_step(slot, events, rules, click_ids)
    return slot, rows, view


def identity_handle(graph: IdentityGraph | None, view: ClientView) -> tuple[IdentityGraph, Output, list[ToPerson]]:
    graph = graph or IdentityGraph()
    found = identity_step(graph, view)
    out = Output(identities=found.rows)
    messages = [
        ToPerson("absorb", view.project_id, old, into=person_id)
        for person_id, absorbed in found.merges
        for old in absorbed
    ]
    messages.append(ToPerson("view", view.project_id, found.person_id, view=view))
    return graph, out, messages


def person_handle(slot: Person | Moved | None, msg: ToPerson) -> tuple[Person | Moved, Output, list[ToPerson]]:
    if isinstance(slot, Moved):
        if msg.kind == "absorb":
            return slot, Output(), []  # a repeated order: the move already happened
        return slot, Output(), [msg._replace(person_id=slot.into)]
    person = slot or Person()
    if msg.kind == "absorb":
        if msg.into == msg.person_id:
            return person, Output(), []
        return Moved(msg.into), Output(), [ToPerson("transfer", msg.project_id, msg.into, state=person)]
    if msg.kind == "transfer":
        person.absorb(msg.state)
        return person, person_credit(msg.project_id, msg.person_id, person, EVER), []
    since = person.take(msg.view)
    if since is None:
        return person, Output(), []
    return person, person_credit(msg.project_id, msg.person_id, person, since), []
