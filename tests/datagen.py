"""Plausible generated traffic for one project: persons with several devices, every source type,
visits, goals, forms with phones that join devices, late and duplicate deliveries.

Deterministic for a seed. Used by property tests, equivalence tests and benchmarks.
"""

from __future__ import annotations

import random
import uuid

from streams.model import Event

DOMAINS = ("kursy.ru", "kursy.kz")
LANDINGS = [
    # (weight, url query, referrer)
    (20, "?utm_source=yandex&utm_medium=cpc&utm_campaign=python&yclid={n}", "https://yandex.ru/"),
    (8, "?gclid={n}&utm_campaign=brand", "https://www.google.com/"),
    (8, "?utm_source=vk&utm_medium=paid_social&utm_campaign=retarget", "https://vk.com/"),
    (5, "?utm_source=mytarget&utm_medium=cpm&utm_campaign=banner", ""),
    (15, "", "https://yandex.ru/search/?text=kursy"),
    (6, "", "https://www.google.com/"),
    (6, "", "https://t.me/kursy_channel"),
    (4, "", "https://vk.com/kursy"),
    (4, "?utm_source=sendpulse&utm_medium=email&utm_campaign=may", ""),
    (4, "", "https://habr.com/ru/articles/1/"),
    (20, "", ""),
]
PAGES = ["/", "/courses", "/courses/python", "/courses/data", "/prices", "/about", "/contacts"]


def generate(persons: int, seed: int = 1, start_ms: int = 1_767_225_600_000, days: int = 120, project_id: str = "p1") -> list[Event]:
    rnd = random.Random(seed)
    weights = [w for w, _, _ in LANDINGS]
    events: list[Event] = []
    counter = 0

    def eid() -> str:
        return str(uuid.UUID(int=rnd.getrandbits(128), version=4))

    for p in range(persons):
        phone = f"ph{seed}-{p}" if rnd.random() < 0.5 else ""
        devices = rnd.choice([1, 1, 1, 2, 2, 3])
        for d in range(devices):
            client = f"c{seed}-{p}-{d}"
            t = start_ms + rnd.randrange(days * 86_400_000)
            for _ in range(rnd.choice([1, 1, 2, 3, 5])):
                _, query, referrer = rnd.choices(LANDINGS, weights)[0]
                counter += 1
                domain = rnd.choice(DOMAINS)
                url = f"https://{domain}{rnd.choice(PAGES)}{query.format(n=counter)}"
                events.append(Event(project_id, domain, eid(), client, "pageview", t, t, url, referrer, "Title"))
                prev = url
                for _ in range(rnd.randrange(6)):
                    t += rnd.randrange(5_000, 20 * 60_000)
                    url = f"https://{domain}{rnd.choice(PAGES)}"
                    events.append(Event(project_id, domain, eid(), client, "pageview", t, t, url, prev, "Title"))
                    prev = url
                    if rnd.random() < 0.05:
                        events.append(Event(project_id, domain, eid(), client, "goal", t + 1000, t + 1000, url, prev, name="signup", value=float(rnd.choice([0, 1000, 5000]))))
                if rnd.random() < 0.15:
                    t += 30_000
                    contact = phone if rnd.random() < 0.9 else f"ph{seed}-other-{p}"
                    events.append(Event(project_id, domain, eid(), client, "form", t, t, url, prev, name="lead", phone_hash=contact if phone else ""))
                # next visit: soon (new source inside timeout), later the same day, or weeks later
                t += rnd.choice([10 * 60_000, 3 * 3_600_000, 7 * 86_400_000, 40 * 86_400_000, 100 * 86_400_000])
    return events


def deliveries(events: list[Event], seed: int = 2, duplicate_share: float = 0.05) -> list[list[Event]]:
    """The same events as a client fleet would deliver them: shuffled, in uneven batches,
    some delivered twice."""
    rnd = random.Random(seed)
    stream = list(events) + rnd.sample(events, int(len(events) * duplicate_share))
    rnd.shuffle(stream)
    batches, i = [], 0
    while i < len(stream):
        n = rnd.choice([1, 5, 50, 500])
        batches.append(stream[i : i + n])
        i += n
    return batches
