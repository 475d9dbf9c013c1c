"""Benchmark the report queries over a generated project of >= 1M events.

    python bench/bench_reports.py                     # embedded chdb in a temp dir
    python bench/bench_reports.py --events 3000000    # bigger
    python bench/bench_reports.py --url http://localhost:8123 --keep

Data is generated with numpy (visits with sources, events inside them, conversions on the
converting events, one attribution row per conversion and model, a few merged identities,
some re-emitted and tombstoned rows so FINAL has work to do) and inserted as Arrow batches
straight into the Store's tables. Then channels (each model) and funnels are timed; the
target is p95 <= 300 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sink.queries import MODELS  # noqa: E402
from sink.store import Store  # noqa: E402
from streams.model import AttributionRow, ConversionRow, EventRow, IdentityRow, VisitRow  # noqa: E402

PROJECT = "bench"
TZ = "Europe/Moscow"
START = date(2024, 2, 15)

# (type, source, medium, campaign count, weight)
SOURCES = [
    ("direct", "", "", 0, 30),
    ("organic", "google", "organic", 0, 12),
    ("organic", "yandex", "organic", 0, 14),
    ("ad", "yandex", "cpc", 12, 18),
    ("ad", "google", "cpc", 8, 8),
    ("ad", "vk", "cpc", 5, 5),
    ("social", "vk.com", "social", 0, 4),
    ("social", "t.me", "social", 0, 3),
    ("referral", "habr.com", "referral", 0, 3),
    ("referral", "vc.ru", "referral", 0, 2),
    ("email", "newsletter", "email", 3, 1),
]
PATHS = ["/", "/pricing", "/pricing/plans", "/contacts", "/about", "/cart", "/checkout"] + [
    f"/blog/post-{i}" for i in range(60)
] + [f"/catalog/item-{i}" for i in range(200)]
GOALS = ["signup", "cart", "video", "download"]


def source_table() -> pd.DataFrame:
    rows = []
    for st, src, med, ncamp, w in SOURCES:
        camps = [f"{src}-{i}" for i in range(ncamp)] or [""]
        for c in camps:
            rows.append((st, src, med, c, w / len(camps)))
    df = pd.DataFrame(rows, columns=["source_type", "source", "medium", "campaign", "w"])
    df["w"] /= df["w"].sum()
    return df


def uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.bytes(16 * n)
    return np.array([str(uuid.UUID(bytes=raw[i * 16 : i * 16 + 16], version=4)) for i in range(n)], dtype=object)


def generate(n_events: int, days: int, seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    t0 = int(datetime(START.year, START.month, START.day, tzinfo=timezone.utc).timestamp() * 1000)
    span = days * 86_400_000
    n_visits = n_events // 4
    n_clients = int(n_visits * 0.6)

    # -- visits --------------------------------------------------------------------------------
    src = source_table()
    v_src = rng.choice(len(src), size=n_visits, p=src["w"].to_numpy())
    # Most clients come once or twice; a tenth of visits are from a small core of regulars.
    v_client = rng.integers(0, n_clients, n_visits)
    regulars = rng.random(n_visits) < 0.1
    v_client[regulars] = rng.integers(0, max(1, n_clients // 100), int(regulars.sum()))
    v_start = t0 + rng.integers(0, span, n_visits)
    per_visit = np.minimum(1 + rng.geometric(0.3, n_visits), 40)
    # Top up so the event count is at least n_events.
    short = n_events - int(per_visit.sum())
    if short > 0:
        per_visit[rng.integers(0, n_visits, short)] += 1
    visits = pd.DataFrame(
        {
            "visit_id": np.char.add("v", np.arange(n_visits).astype(str)).astype(object),
            "client_id": np.char.add("c", v_client.astype(str)).astype(object),
            "start_ts": v_start,
            "source_type": src["source_type"].to_numpy()[v_src],
            "source": src["source"].to_numpy()[v_src],
            "medium": src["medium"].to_numpy()[v_src],
            "campaign": src["campaign"].to_numpy()[v_src],
            "events": per_visit.astype(np.uint32),
        }
    )

    # -- events: per_visit events per visit, ~60 s apart ----------------------------------------
    n = int(per_visit.sum())
    vi = np.repeat(np.arange(n_visits), per_visit)
    first = np.concatenate(([0], np.cumsum(per_visit)[:-1]))
    pos = np.arange(n) - np.repeat(first, per_visit)
    gaps = rng.exponential(60_000, n).astype(np.int64)
    gaps[pos == 0] = 0
    cum = np.cumsum(gaps)
    ts = v_start[vi] + cum - np.repeat(cum[first], per_visit)
    last = pos == per_visit[vi] - 1
    etype = np.full(n, "pageview", dtype=object)
    r = rng.random(n)
    # The last event of a visit is sometimes a conversion; a few goals happen mid-visit.
    etype[last & (r < 0.04)] = "form"
    etype[last & (r >= 0.04) & (r < 0.05)] = "call"
    etype[last & (r >= 0.05) & (r < 0.055)] = "deal"
    etype[~last & (r < 0.03)] = "goal"
    is_pv = etype == "pageview"
    path = np.where(is_pv, np.array(PATHS, dtype=object)[rng.integers(0, len(PATHS), n)], "")
    # Pricing is a common second page, so funnels have something to find.
    path[is_pv & (pos == 1) & (rng.random(n) < 0.3)] = "/pricing"
    name = np.full(n, "", dtype=object)
    name[etype == "goal"] = np.array(GOALS, dtype=object)[rng.integers(0, len(GOALS), int((etype == "goal").sum()))]
    name[etype == "form"] = "callback"
    name[etype == "call"] = "line-1"
    name[etype == "deal"] = "order"
    event_ids = uuids(rng, n)
    client = visits["client_id"].to_numpy()[vi]
    events = pd.DataFrame(
        {
            "event_id": event_ids,
            "client_id": client,
            "ts": ts,
            "received_at": ts + rng.integers(20, 500, n),
            "type": etype,
            "name": name,
            "url": np.char.add("https://bench.example", path.astype(str)).astype(object),
            "path": path,
            "source_type": np.where(pos == 0, visits["source_type"].to_numpy()[vi], "internal"),
            "utm_source": np.where(pos == 0, visits["source"].to_numpy()[vi], ""),
            "utm_medium": np.where(pos == 0, visits["medium"].to_numpy()[vi], ""),
            "utm_campaign": np.where(pos == 0, visits["campaign"].to_numpy()[vi], ""),
            "value": np.where(etype == "deal", rng.integers(1_000, 100_000, n), 0).astype(np.float64),
        }
    )
    visits["end_ts"] = ts[np.cumsum(per_visit) - 1]
    visits["pageviews"] = np.bincount(vi, weights=is_pv, minlength=n_visits).astype(np.uint32)

    # -- conversions and attributions -----------------------------------------------------------
    conv_mask = np.isin(etype, ["form", "call", "deal"]) | ((etype == "goal") & (name == "signup"))
    conv = pd.DataFrame(
        {
            "conversion_id": event_ids[conv_mask],
            "kind": etype[conv_mask],
            "name": name[conv_mask],
            "client_id": client[conv_mask],
            "ts": ts[conv_mask],
            "vi": vi[conv_mask],
            "value": events["value"].to_numpy()[conv_mask],
        }
    )
    conv["visit_id"] = visits["visit_id"].to_numpy()[conv["vi"]]
    conv["person_id"] = conv["client_id"]
    vs = visits.sort_values("start_ts")
    firsts = vs.groupby("client_id", sort=False).head(1)
    first_of = pd.Series(firsts.index.to_numpy(), index=firsts["client_id"].to_numpy())
    credit = {
        "last_click": conv["vi"].to_numpy(),
        # the client's first visit (a simplification of the 90-day history)
        "first_click": first_of.loc[conv["client_id"].to_numpy()].to_numpy(),
    }
    # last significant: the latest non-direct visit of the client up to the conversion
    sig = vs[vs["source_type"] != "direct"][["client_id", "start_ts"]].reset_index().rename(columns={"index": "svi"})
    cs = conv[["client_id", "ts"]].reset_index().sort_values("ts")
    m = pd.merge_asof(cs, sig.sort_values("start_ts"), left_on="ts", right_on="start_ts", by="client_id")
    m = m.set_index("index").sort_index()
    credit["last_significant_click"] = np.where(m["svi"].isna(), conv["vi"], m["svi"].fillna(0)).astype(np.int64)
    def credited(model: str, c: np.ndarray, weight: float) -> pd.DataFrame:
        a = conv[["conversion_id", "ts", "kind", "name", "person_id", "value"]].rename(columns={"ts": "conversion_ts"})
        a["model"] = model
        for col in ("visit_id", "source_type", "source", "medium", "campaign"):
            a[col] = visits[col].to_numpy()[c]
        a["visit_start"] = visits["start_ts"].to_numpy()[c]
        a["weight"] = weight
        return a

    attrs = []
    for model in MODELS:
        if model in credit:
            attrs.append(credited(model, credit[model], 1.0))
        else:
            # Multi-touch models (linear): half to the first visit, half to the last.
            both = pd.concat([credited(model, credit["first_click"], 0.5), credited(model, credit["last_click"], 0.5)])
            keys = ["conversion_id", "visit_id"]
            both["weight"] = both.groupby(keys)["weight"].transform("sum")
            attrs.append(both.drop_duplicates(keys))
    attributions = pd.concat(attrs, ignore_index=True)

    # -- identities: ~3% of clients merged into another --------------------------------------
    k = max(1, n_clients // 33)
    a_ids = rng.integers(0, n_clients, k)
    b_ids = rng.integers(0, n_clients, k)
    lo, hi = np.minimum(a_ids, b_ids), np.maximum(a_ids, b_ids)
    keep = lo != hi
    identities = pd.DataFrame(
        {
            "client_id": np.char.add("c", hi[keep].astype(str)).astype(object),
            "person_id": np.char.add("c", lo[keep].astype(str)).astype(object),
        }
    ).drop_duplicates("client_id")
    return {"events": events, "visits": visits, "conversions": conv, "attributions": attributions, "identities": identities}


def to_arrow(df: pd.DataFrame, row_type, defaults: dict) -> pa.Table:
    """A table with exactly the row type's columns: timestamps as ms, missing ones defaulted."""
    cols = {}
    n = len(df)
    ts_cols = {"ts", "received_at", "start_ts", "end_ts", "conversion_ts", "visit_start"}
    for f in row_type._fields:
        if f in df:
            v = df[f].to_numpy()
        else:
            v = np.full(n, defaults.get(f, ""), dtype=object)
        if f in ts_cols:
            cols[f] = pa.array(v.astype("int64"), pa.timestamp("ms", tz="UTC"))
        elif f in ("version", "pageviews", "events"):
            cols[f] = pa.array(v.astype("uint64") if f == "version" else v.astype("uint32"))
        elif f == "is_deleted":
            cols[f] = pa.array(v.astype("uint8"))
        elif f in ("value", "weight"):
            cols[f] = pa.array(v.astype("float64"))
        else:
            cols[f] = pa.array(v.astype(object), pa.string())
    return pa.table(cols)


DEFAULTS = {"project_id": PROJECT, "site": "bench.example", "props": "{}", "currency": "RUB", "version": 1, "is_deleted": 0}


def load(store: Store, data: dict[str, pd.DataFrame], chunk: int, seed: int) -> dict[str, int]:
    plan = {
        "events": (EventRow, data["events"]),
        "visits": (VisitRow, data["visits"]),
        "conversions": (ConversionRow, data["conversions"]),
        "attributions": (AttributionRow, data["attributions"]),
        "identities": (IdentityRow, data["identities"]),
    }
    # Re-emitted rows (2% of visits and attributions, higher version) and tombstones (0.5%),
    # as the pipeline writes when late events move visits and credit.
    for table in ("visits", "attributions"):
        df = plan[table][1].assign(version=1, is_deleted=0)
        again = df.sample(frac=0.02, random_state=seed).copy()
        again["version"] = 2
        dead = df.sample(frac=0.005, random_state=seed + 7).copy()
        dead["version"], dead["is_deleted"] = 3, 1
        plan[table] = (plan[table][0], pd.concat([df, again, dead], ignore_index=True))
    counts = {}
    for table, (row_type, df) in plan.items():
        # Batches in time order, like the pipeline's inserts.
        order_col = next((c for c in ("ts", "start_ts", "conversion_ts") if c in df), None)
        if order_col:
            df = df.sort_values(order_col, kind="stable")
        for i in range(0, len(df), chunk):
            store.client.insert_arrow(table, to_arrow(df.iloc[i : i + chunk], row_type, DEFAULTS), database=store.database)
        counts[table] = len(df)
    return counts


def cpu_s() -> float:
    """CPU time of this process (all threads): chdb runs in-process, so this is the engine's
    work, which a busy machine does not inflate the way it inflates wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, runs: int) -> tuple[float, float, float, float, object]:
    """(min, p50, p95 wall ms, p50 CPU ms, last result) after one warm-up run."""
    fn()
    xs, cs = [], []
    result = None
    for _ in range(runs):
        t, c = time.perf_counter(), cpu_s()
        result = fn()
        xs.append((time.perf_counter() - t) * 1000)
        cs.append((cpu_s() - c) * 1000)
    xs.sort()
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return xs[0], statistics.median(xs), p95, statistics.median(cs), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_200_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=100_000, help="rows per insert")
    ap.add_argument("--url", default="", help="ClickHouse server URL; empty for embedded chdb")
    ap.add_argument("--data-dir", default="", help="chdb data dir (default: a temp dir, removed after)")
    ap.add_argument("--database", default="skvoz_bench")
    ap.add_argument("--keep", action="store_true", help="keep the data (do not drop the database)")
    ap.add_argument("--reuse", action="store_true", help="skip generation if the database has data")
    ap.add_argument("--optimize", action="store_true", help="OPTIMIZE ... FINAL before timing")
    ap.add_argument("--target-ms", type=float, default=300.0)
    args = ap.parse_args(argv)

    tmp = None
    data_dir = args.data_dir
    if not data_dir and not args.url:
        tmp = data_dir = tempfile.mkdtemp(prefix="skvoz-bench-")
    store = Store.connect(args.url, data_dir or ".", args.database)
    try:
        store.migrate()
        have = store.client.command(
            "SELECT count() FROM {db:Identifier}.events WHERE project_id = {p:String}",
            parameters={"db": args.database, "p": PROJECT},
        )
        if not (args.reuse and have):
            if have:
                for t in ("events", "visits", "conversions", "attributions", "identities"):
                    store.client.command(
                        "TRUNCATE TABLE {db:Identifier}.{t:Identifier}", parameters={"db": args.database, "t": t}
                    )
            t = time.perf_counter()
            data = generate(args.events, args.days, args.seed)
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            counts = load(store, data, args.chunk, args.seed)
            print(f"generated in {gen_s:.1f}s, inserted in {time.perf_counter() - t:.1f}s: "
                  + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        if args.optimize:
            for t in ("events", "visits", "conversions", "attributions", "identities"):
                store.client.command(
                    "OPTIMIZE TABLE {db:Identifier}.{t:Identifier} FINAL", parameters={"db": args.database, "t": t}
                )
        parts = store.client.query(
            "SELECT table, count(), sum(rows) FROM system.parts WHERE database = {db:String} AND active "
            "GROUP BY table ORDER BY table",
            parameters={"db": args.database},
        ).result_rows
        print("active parts: " + ", ".join(f"{t}={n} ({r:,} rows)" for t, n, r in parts))

        d0, d1 = START, START + timedelta(days=args.days - 1)
        cases = []
        for model in MODELS:
            for gb in (["type"], ["source", "medium", "campaign"]):
                cases.append((f"channels {model} [{','.join(gb)}]",
                              lambda m=model, g=gb: store.channels(PROJECT, TZ, d0, d1, m, g)))
        week = (d1 - timedelta(days=6), d1)
        cases.append(("channels last_click [source] last 7 days",
                      lambda: store.channels(PROJECT, TZ, *week, "last_click", ["source"])))
        steps3 = ["pageview:/*", "pageview:/pricing*", "form:*"]
        cases.append(("funnel 3 steps, 1 day window", lambda: store.funnel(PROJECT, TZ, d0, d1, steps3, 86400)))
        cases.append(("funnel 3 steps, group_by source",
                      lambda: store.funnel(PROJECT, TZ, d0, d1, steps3, 86400, "source")))
        steps5 = ["pageview:/", "pageview:/catalog/*", "pageview:/cart", "pageview:/checkout", "deal:*"]
        cases.append(("funnel 5 steps, 7 day window", lambda: store.funnel(PROJECT, TZ, d0, d1, steps5, 7 * 86400)))
        cases.append(("funnel 2 steps last 7 days", lambda: store.funnel(PROJECT, TZ, *week, steps3[1:], 3600)))

        worst = 0.0
        print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{'query':<50} {'min ms':>7} {'p50 ms':>7} {'p95 ms':>7} {'cpu ms':>7}  result")
        for label, fn in cases:
            best, p50, p95, cpu, res = timed(fn, args.runs)
            worst = max(worst, p95)
            if "rows" in res:
                summary = f"{len(res['rows'])} rows, totals {res['totals']}"
            else:
                summary = "persons " + " > ".join(str(s["persons"]) for s in res["steps"])
                if "groups" in res:
                    summary += f", {len(res['groups'])} groups"
            print(f"{label:<50} {best:7.1f} {p50:7.1f} {p95:7.1f} {cpu if not args.url else float('nan'):7.1f}  {summary}")
        ok = worst <= args.target_ms
        print(f"\nworst p95 {worst:.1f} ms — {'meets' if ok else 'MISSES'} the {args.target_ms:.0f} ms target")
        if not args.keep:
            store.client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": args.database})
        return 0 if ok else 1
    finally:
        store.close()
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
