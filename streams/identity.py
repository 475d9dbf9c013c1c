"""Identity: normalise contacts, hash them, and join client ids that share one into a person.

A person is a connected component of the graph whose nodes are client ids and contact hashes
(phone, email, later CRM contact ids) and whose edges come from events that carry both. Its id
is the smallest client id in the component, so it does not depend on arrival order.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

_NON_DIGITS = re.compile(r"\D+")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# National numbers without the country code, by length and leading digit, for the markets we
# serve. Russia and Kazakhstan share +7 (10 national digits); a leading 8 is the trunk prefix.
_COUNTRY_CODES = ("7", "998", "996", "375", "380", "374", "992", "993", "994", "995")


def normalize_phone(raw: str | None) -> str | None:
    """A phone number as E.164 digits without '+', or None when it cannot be one.

    ``8 (912) 345-67-89`` and ``+7 912 345 67 89`` -> ``79123456789``; ``9123456789`` (a bare
    Russian mobile) -> ``79123456789``; ``+998 90 123 45 67`` -> ``998901234567``.
    """
    if not raw:
        return None
    text = str(raw).strip()
    plus = text.startswith("+") or text.startswith("00")
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("00"):
        digits = digits[2:]
    if not plus:
        if len(digits) == 11 and digits[0] == "8":
            digits = "7" + digits[1:]
        elif len(digits) == 10 and digits[0] == "9":
            digits = "7" + digits
    if not 10 <= len(digits) <= 15 or digits[0] == "0":
        return None
    if digits[0] == "7" and len(digits) != 11:
        return None
    return digits


def normalize_email(raw: str | None) -> str | None:
    if not raw:
        return None
    email = str(raw).strip().lower()
    return email if _EMAIL.match(email) and len(email) <= 254 else None


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """A stable pseudonym for a contact: HMAC-SHA256 under the installation's secret.

    ``kind`` (phone/email/crm) is mixed in so equal strings of different kinds never collide.
    """
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(slots=True)
class IdentityGraph:
    """Union-find over client ids and contact hashes, per project.

    ``parent`` maps a node to its parent; roots map to themselves. Client ids are stored as
    ``c:<id>``, contacts as ``p:<hash>`` / ``e:<hash>``. ``members`` keeps each root's client ids
    so a merge can tell which clients changed person.
    """

    parent: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    # the person id (smallest client id) of each root
    person: dict[str, str] = field(default_factory=dict)
    # successful unions = nodes - components: depends only on the set of links, never on
    # their order, so it versions identity rows
    unions: int = 0

    def _find(self, node: str) -> str:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def _add(self, node: str) -> str:
        if node not in self.parent:
            self.parent[node] = node
            if node.startswith("c:"):
                self.members[node] = [node[2:]]
                self.person[node] = node[2:]
            else:
                self.members[node] = []
                self.person[node] = ""
        return self._find(node)

    def person_of(self, client_id: str) -> str:
        node = "c:" + client_id
        if node not in self.parent:
            return client_id
        return self.person[self._find(node)]

    def clients_of(self, person_id: str) -> list[str]:
        node = "c:" + person_id
        if node not in self.parent:
            return [person_id]
        return list(self.members[self._find(node)])

    def add_client(self, client_id: str) -> bool:
        """Register a client; True when it is new."""
        node = "c:" + client_id
        if node in self.parent:
            return False
        self._add(node)
        return True

    def link(self, client_id: str, contact_node: str) -> tuple[str, list[str]] | None:
        """Join a client with a contact node (``p:<hash>``). Returns None when nothing merged,
        else ``(person_id, old_person_ids)``: the surviving person and the persons folded in."""
        a = self._add("c:" + client_id)
        b = self._add(contact_node)
        if a == b:
            return None
        self.unions += 1
        pa, pb = self.person[a], self.person[b]
        # union by size keeps finds short; the person id is decided by value, not by size
        if len(self.members[a]) < len(self.members[b]):
            a, b = b, a
        self.parent[b] = a
        self.members[a].extend(self.members.pop(b))
        self.person.pop(b)
        persons = [p for p in (pa, pb) if p]
        new_person = min(persons)
        self.person[a] = new_person
        old = [p for p in persons if p != new_person]
        return (new_person, old) if old else None
