"""Per-project settings the pure core needs, decoupled from the config file format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ProjectRules:
    project_id: str
    domains: tuple[str, ...]  # every site domain of the project: referrers from these are internal
    visit_timeout_ms: int = 30 * 60 * 1000
    conversion_goals: frozenset[str] = frozenset()
    currency: str = "RUB"
    store_contacts: bool = False
    # extra click-id URL parameters -> (source, medium), on top of streams.sources.CLICK_IDS
    click_ids: tuple[tuple[str, str, str], ...] = field(default=())
