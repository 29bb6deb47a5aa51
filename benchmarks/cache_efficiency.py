"""Benchmark: adapter-cache efficiency of each eviction/prefetch policy against Belady's bound.

Issue goal: loads (prefetches included) and load-seconds of each policy over Belady's, both in
the simulator and under the `t2i trace cache` rules; coordinator at most 1.15x Belady's loads,
and at least 40% fewer load-seconds than per-replica LRU at the same memory.

Two parts (`--parts`, default `rules,sim`):

- `rules` (this script): the `t2i trace cache` rules of `trace_replay/cache_sim.py`. Requests in
  timestamp order; a request's adapters accessed in order (ControlNets as listed, then LoRAs);
  one cache of K adapter slots per instance, ControlNets and LoRAs sharing it; a miss is a load;
  prefetch loads are loads too. Rows per trace, policy and K:
    lru, lfu, cost-aware       eviction only, `run_cache(..., prefetch_name="none")`
    coordinator (cost-aware+fill-popular)
                               the coordinator as far as these rules can express it: cost-aware
                               eviction plus the fill-popular prefetch (free slots filled with
                               the cluster's most used adapters); no routing or placement exists
                               under these rules, so this is all of it that can be measured here
    belady                     Belady's MIN, the offline optimum of demand loads per cache (and,
                               loads all costing one, of loads with prefetch counted too)
  Loads, misses and prefetch loads come from `trace_replay.cache_sim.run_cache`, the engine
  behind `t2i trace cache` (one AccessStream per trace, built once).
- `sim`: the same figures in the cluster simulator (`trace_replay/simulator`); not built yet.

Load-seconds = sum over loads of the load time of the loaded adapter's kind. Per-kind times are
the MEANS of GenTD26's measured per-container samples (`load_component_latencies`: lora,
controlnet), because a total over many loads is estimated by count x mean (`--load-cost-stat
median` switches; the GenTD26 medians put ControlNet below LoRA, the means above). Without
../shared/data the talk's means stand in (policies/cost_aware.py DEFAULT_LOAD_COST_S: LoRA 4.6 s,
ControlNet 5.1 s). Belady minimises the number of loads, not load-seconds; with two kinds of
different cost its load-seconds are a reference, not a lower bound. The lower bound every row
carries instead, `load_seconds_floor_vs_lru`, is Belady's loads x the cheapest kind's seconds over
LRU's load-seconds: no eviction or prefetch policy at that K can go below it (prefetch loads count,
and with loads of equal count-cost demand paging is optimal), so where it is above 0.6 the "40%
fewer load-seconds than LRU" goal cannot be met under these rules at all.

The per-kind split of loads: `CacheResult` gives totals only, and running kind-filtered streams
would be wrong (the kinds share each cache). So this script replays every (trace, policy, K)
once more with `kind_split_replay`, a plain one-access-at-a-time replay written from cache_sim's
public pieces (CacheView, lex_argmin, the EVICTION/PREFETCH registries, the AccessStream) that
records the kind of every load, and checks that its per-instance misses and prefetch loads equal
`run_cache`'s exactly (it stops if not), so the split is of the very loads counted. On GenTD26
every adapter is a LoRA (the processed file lists LoRA ids only), so there the split is trivial;
the replay runs anyway as the cross-check.

Workloads:
- `gentd26`: GenTD26 `data_trace_processed.csv` (40k rows in ../shared/data). The format has no
  instance column, so the whole trace is ONE cache (instance "all"): K is the slots of a single
  cache seeing every request, hence the larger capacities (`--gentd26-capacities`). Arrival times
  are drawn (seeded, qps.csv shape) but keep row order, and none of these policies reads time,
  so the figures do not depend on them.
- `katz-synth`: a Katz-shaped synthetic trace (`trace_replay.synth`, seeded), `--requests` over
  `--instances` caches (550k/106 as benchmarks/simulator_policies.py writes it), loaded with the
  `katz` loader (instance = (scene_id, ip)).

    python benchmarks/cache_efficiency.py --parts rules              # ~6 min on 2 cores
    python benchmarks/cache_efficiency.py --parts rules --requests 50000 --capacities 2,8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, git, machine_info, write_result  # noqa: E402

COORDINATOR = "coordinator (cost-aware+fill-popular)"
# (row name, eviction, prefetch); belady first: every other row is a ratio to it
POLICIES = [("belady", "belady", "none"), ("lru", "lru", "none"), ("lfu", "lfu", "none"),
            ("cost-aware", "cost-aware", "none"), (COORDINATOR, "cost-aware", "fill-popular")]
GOAL_LOADS_OVER_BELADY = 1.15
GOAL_LOAD_SECONDS_VS_LRU = 0.60  # "at least 40% fewer load-seconds than per-replica LRU"


def load_costs(data_dir: Path, stat: str) -> tuple[dict[int, float], str]:
    """Seconds per load by kind code (CONTROLNET, LORA), and where they came from."""
    from policies.cost_aware import DEFAULT_LOAD_COST_S
    from trace_replay.table import CONTROLNET, LORA

    names = {CONTROLNET: "controlnet", LORA: "lora"}
    try:
        from trace_replay.formats.gentd26 import load_component_latencies

        lat = load_component_latencies(data_dir)
    except FileNotFoundError:
        lat = {}
    if all(n in lat for n in names.values()):
        f = np.mean if stat == "mean" else np.median
        costs = {k: float(f(lat[n].values_s)) for k, n in names.items()}
        src = f"GenTD26 measured per-kind {stat} ({data_dir}; " + ", ".join(
            f"{n} n={lat[n].values_s.size}" for n in names.values()) + ")"
        return costs, src
    return ({k: float(DEFAULT_LOAD_COST_S[k]) for k in names},
            f"talk means (policies/cost_aware.py DEFAULT_LOAD_COST_S); {data_dir} has no latency files")


def kind_split_replay(stream, eviction: str, capacity: int, prefetch: str = "none", seed: int = 0,
                      show_progress: bool = False, label: str = "") -> dict[str, np.ndarray]:
    """Misses, prefetch loads (per instance) and loads per kind (indexed by kind code) of one cache
    size, one access at a time in global time order, recording each load's kind.

    Same rules and mechanism as cache_sim.simulate_sequential (the reference engine), kept so the
    totals match it exactly: a free slot is taken first (slots fill in order and are never emptied),
    otherwise the policy's lex-smallest slot is the victim; after the last access of a request on
    an instance the prefetcher is asked and each proposed key not cached is loaded (evicting if
    full). As in the reference, a prefetched slot keeps the kind code it had before (0 for a never
    used slot) until its first access; the kind counted for the load is the adapter's true kind.
    """
    from policies.eviction import EMPTY, EVICTION, NEVER, CacheView, lex_argmin
    from policies.prefetch import PREFETCH, PrefetchContext
    from trace_replay.progress import progress

    policy = EVICTION.create(eviction)
    pre_policy = None if prefetch == "none" else PREFETCH.create(prefetch)
    n_inst, K = len(stream.instances), capacity
    key = np.full((n_inst, K), EMPTY, dtype=np.int64)
    kind = np.zeros((n_inst, K), dtype=np.int8)
    uses = np.zeros((n_inst, K), dtype=np.int64)
    last_seq = np.full((n_inst, K), -1, dtype=np.int64)
    loaded_seq = np.full((n_inst, K), -1, dtype=np.int64)
    last_time = np.zeros((n_inst, K), dtype=np.float64)
    next_seq = np.full((n_inst, K), NEVER, dtype=np.int64)
    where: list[dict[int, int]] = [{} for _ in range(n_inst)]
    misses = np.zeros(n_inst, dtype=np.int64)
    pre = np.zeros(n_inst, dtype=np.int64)
    by_kind = np.zeros(8, dtype=np.int64)
    key_kind = np.zeros(stream.n_keys, dtype=np.int8)
    key_kind[stream.key] = stream.kind
    future = policy.needs_future
    everywhere = np.ones(K, dtype=bool)
    rng = np.random.default_rng(seed)
    key_uses = np.zeros(stream.n_keys, dtype=np.int64)
    key_last = np.full(stream.n_keys, -np.inf)

    def view(i: int, q: int, now: float) -> CacheView:
        return CacheView(key[i], kind[i], uses[i], last_seq[i], loaded_seq[i], last_time[i], np.int64(q),
                         np.float64(now), next_seq[i] if future else None)

    def slot_for(i: int, q: int, now: float) -> int:
        w = where[i]
        if len(w) < K:
            return len(w)
        slot = int(lex_argmin(policy.priority(view(i, q, now)), everywhere))
        del w[int(key[i, slot])]
        return slot

    order = np.lexsort((stream.seq, stream.request))
    inst_a, key_a, kind_a = stream.instance[order], stream.key[order], stream.kind[order]
    seq_a, time_a, next_a, req_a = stream.seq[order], stream.time[order], stream.next_seq[order], stream.request[order]
    if pre_policy is not None:  # last access of a request on its instance: prefetch after it
        last_of_req = np.ones(order.size, dtype=bool)
        last_of_req[:-1] = (req_a[1:] != req_a[:-1]) | (inst_a[1:] != inst_a[:-1])
    lo_inst = stream.starts
    cols = [c.tolist() for c in (inst_a, key_a, kind_a, seq_a, time_a, next_a)]
    for idx, (i, k, kd, q, t, nx) in enumerate(progress(zip(*cols), total=order.size, desc=label,
                                                         disable=not show_progress)):
        slot = where[i].get(k)
        if slot is None:
            misses[i] += 1
            by_kind[kd] += 1
            slot = slot_for(i, q, t)
            uses[i, slot], loaded_seq[i, slot] = 1, q
        else:
            uses[i, slot] += 1
        key[i, slot], kind[i, slot] = k, kd
        last_seq[i, slot], last_time[i, slot], next_seq[i, slot] = q, t, nx
        where[i][k] = slot
        if pre_policy is None:
            continue
        key_uses[k] += 1
        key_last[k] = t
        if not last_of_req[idx]:
            continue
        ctx = PrefetchContext(view(i, q, t), key_uses, key_last, q, t)
        for pk in pre_policy.propose(ctx, rng).tolist():
            if pk in where[i]:
                continue
            slot = slot_for(i, q, t)
            key[i, slot], uses[i, slot], loaded_seq[i, slot] = pk, 0, q
            last_seq[i, slot], last_time[i, slot] = q, t
            if future:  # the next access to pk on this instance after seq q
                lo, hi = lo_inst[i] + q + 1, lo_inst[i] + stream.lengths[i]
                later = np.flatnonzero(stream.key[lo:hi] == pk)
                next_seq[i, slot] = q + 1 + int(later[0]) if later.size else NEVER
            else:
                next_seq[i, slot] = NEVER
            where[i][pk] = slot
            pre[i] += 1
            by_kind[key_kind[pk]] += 1
    return {"misses": misses, "prefetch_loads": pre, "loads_by_kind": by_kind}


def workloads(args: argparse.Namespace, tmp: Path) -> list[tuple[str, object, list[int], list[str]]]:
    from trace_replay.formats import load_trace
    from trace_replay.synth import SynthConfig, write_katz_json

    out = []
    proc = Path(args.data_dir) / "data_trace_processed.csv"
    if args.skip_gentd26:
        pass
    elif proc.exists():
        table = load_trace(proc, "gentd26-processed", qps_path=Path(args.data_dir) / "qps.csv", seed=args.seed)
        out.append(("gentd26", table, _ints(args.gentd26_capacities),
                    [f"{proc.name}: {len(table):,} rows, one instance ({table.instances[0]!r}: the format has no "
                     "instance column), LoRAs only"]))
    else:
        print(f"skipping gentd26: {proc} not found", flush=True)
    if args.requests > 0:
        trace = tmp / "katz_synth.json"
        cfg = SynthConfig(requests=args.requests, instances=args.instances, seed=args.seed)
        write_katz_json(cfg, trace)
        table = load_trace(trace, "katz")
        out.append(("katz-synth", table, _ints(args.capacities),
                    [f"SynthConfig(requests={args.requests}, instances={args.instances}, seed={args.seed})"]))
    return out


def _ints(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x.strip()})


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def rules_rows(args: argparse.Namespace) -> list[dict]:
    """One row per (trace, policy, capacity) under the `t2i trace cache` rules."""
    from trace_replay.cache_sim import access_stream, run_cache
    from trace_replay.table import CONTROLNET, LORA

    costs, cost_src = load_costs(Path(args.data_dir), args.load_cost_stat)
    args.load_costs_s = {"controlnet": costs[CONTROLNET], "lora": costs[LORA], "source": cost_src}
    print(f"load cost per load: ControlNet {costs[CONTROLNET]:.3f} s, LoRA {costs[LORA]:.3f} s ({cost_src})", flush=True)
    show = not args.no_progress
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, table, caps, notes in workloads(args, Path(tmp)):
            t0 = time.perf_counter()
            stream = access_stream(table)
            print(f"{label}: {stream.n_requests:,} requests, {stream.n_accesses:,} adapter accesses "
                  f"({int((stream.kind == CONTROLNET).sum()):,} ControlNet, {int((stream.kind == LORA).sum()):,} LoRA), "
                  f"{len(stream.instances)} instance(s), {stream.n_keys:,} adapters; K = {caps}", flush=True)
            for name, ev, pf in POLICIES:
                t1 = time.perf_counter()
                res = run_cache(table, ev, caps, prefetch_name=pf, seed=args.seed, stream=stream, show_progress=show)
                t_cache = time.perf_counter() - t1
                for j, c in enumerate(caps):
                    t2 = time.perf_counter()
                    split = kind_split_replay(stream, ev, c, pf, args.seed, show, f"{label} {name} K={c} kind split")
                    if not (np.array_equal(split["misses"], res.misses[:, j])
                            and np.array_equal(split["prefetch_loads"], res.prefetch_loads[:, j])):
                        raise RuntimeError(f"kind-split replay disagrees with run_cache: {label} {name} K={c}: "
                                           f"misses {int(split['misses'].sum())} vs {int(res.misses[:, j].sum())}, "
                                           f"prefetch {int(split['prefetch_loads'].sum())} vs "
                                           f"{int(res.prefetch_loads[:, j].sum())}")
                    s = res.summary(c)
                    bk = split["loads_by_kind"]
                    assert int(bk.sum()) == s["loads"]
                    ls = float(bk[CONTROLNET] * costs[CONTROLNET] + bk[LORA] * costs[LORA])
                    rows.append({"trace": label, "policy": name, "eviction": ev, "prefetch": pf, "capacity": c,
                                 "instances": s["instances"], "requests": s["requests"], "accesses": s["accesses"],
                                 "loads": s["loads"], "misses": s["misses"], "prefetch_loads": s["prefetch_loads"],
                                 "miss_ratio": round(s["miss_ratio"], 5),
                                 "loads_controlnet": int(bk[CONTROLNET]), "loads_lora": int(bk[LORA]),
                                 "load_seconds": round(ls, 1), "cache_s": round(t_cache, 2),
                                 "kind_split_s": round(time.perf_counter() - t2, 2), "notes": notes})
                print(f"  {name:38s} done ({time.perf_counter() - t1:.0f} s)", flush=True)
            print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
    for r in rows:
        same = {p["policy"]: p for p in rows if p["trace"] == r["trace"] and p["capacity"] == r["capacity"]}
        bel, lru = same["belady"], same["lru"]
        r["loads_over_belady"] = _ratio(r["loads"], bel["loads"])
        r["load_seconds_over_belady"] = _ratio(r["load_seconds"], bel["load_seconds"])
        r["load_seconds_vs_lru"] = _ratio(r["load_seconds"], lru["load_seconds"])
        # what no policy can beat under these rules: loads >= Belady's, each load >= the cheapest kind
        r["load_seconds_floor_vs_lru"] = _ratio(min(costs.values()) * bel["loads"], lru["load_seconds"])
        r["goal_loads_le_1_15x_belady"] = r["loads"] <= GOAL_LOADS_OVER_BELADY * bel["loads"]
        r["goal_load_seconds_le_0_6x_lru"] = r["load_seconds"] <= GOAL_LOAD_SECONDS_VS_LRU * lru["load_seconds"]
    return rows


def sim_rows(args: argparse.Namespace) -> list[dict]:
    # ---- NOT BUILT YET: the same figures in the cluster simulator (trace_replay/simulator). ----
    raise NotImplementedError("simulator part: not built yet")


def print_rules(rows: list[dict]) -> None:
    print("\nunder the `t2i trace cache` rules (loads include prefetch loads; ratios at the same K)")
    hdr = (f"{'trace':10s} {'policy':38s} {'K':>3s} {'loads':>9s} {'prefetch':>8s} {'load-s':>11s} "
           f"{'loads/Bel':>9s} {'ls/Bel':>7s} {'ls/LRU':>7s}  goals(<=1.15x Bel, <=0.6x LRU)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        goals = ("yes" if r["goal_loads_le_1_15x_belady"] else "no") + " / " + \
            ("yes" if r["goal_load_seconds_le_0_6x_lru"] else "no")
        mark = "  <- coordinator" if r["policy"] == COORDINATOR else ""
        print(f"{r['trace']:10s} {r['policy']:38s} {r['capacity']:3d} {r['loads']:9,d} {r['prefetch_loads']:8,d} "
              f"{r['load_seconds']:11,.0f} {r['loads_over_belady']:9.3f} {r['load_seconds_over_belady']:7.3f} "
              f"{r['load_seconds_vs_lru']:7.3f}  {goals if r['policy'] not in ('belady', 'lru') else '':10s}{mark}")
    floors = {(r["trace"], r["capacity"]): r["load_seconds_floor_vs_lru"] for r in rows}
    print("floor of load-seconds / LRU for ANY policy (Belady's loads x the cheapest kind's seconds): " +
          ", ".join(f"{t} K={k}: {v:.3f}" for (t, k), v in floors.items()))
    coord = [r for r in rows if r["policy"] == COORDINATOR]
    if coord:
        a = sum(r["goal_loads_le_1_15x_belady"] for r in coord)
        b = sum(r["goal_load_seconds_le_0_6x_lru"] for r in coord)
        print(f"coordinator: loads <= 1.15x Belady in {a}/{len(coord)} (trace, K); "
              f"load-seconds <= 0.6x LRU in {b}/{len(coord)}")


def main() -> int:
    from trace_replay.paths import gentd26_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="rules,sim", help="comma list of rules, sim (default both; sim is not built "
                    "yet and is skipped with a message)")
    ap.add_argument("--capacities", default="2,4,8,16", help="K, adapter slots per instance, for katz-synth")
    ap.add_argument("--gentd26-capacities", default="2,4,8,16,32,64",
                    help="K for gentd26, whose whole trace is one cache (no instance column)")
    ap.add_argument("--requests", type=int, default=550_000, help="katz-synth requests (0 skips katz-synth)")
    ap.add_argument("--instances", type=int, default=106, help="katz-synth instances (caches)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic trace, GenTD26 arrivals, prefetch rng")
    ap.add_argument("--load-cost-stat", choices=["mean", "median"], default="mean",
                    help="statistic of GenTD26's per-kind load-time samples used as seconds per load")
    ap.add_argument("--data-dir", default=str(gentd26_dir()), help="GenTD26 folder (default ../shared/data/gentd26)")
    ap.add_argument("--skip-gentd26", action="store_true")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    ap.add_argument("--out", default=str(RESULTS / "cache_efficiency.json"))
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if bad := set(parts) - {"rules", "sim"}:
        ap.error(f"unknown parts: {sorted(bad)}")
    t0 = time.perf_counter()
    doc: dict = {"benchmark": "cache_efficiency", "rules": [], "sim": [], "parts_run": []}
    if "rules" in parts:
        doc["rules"] = rules_rows(args)
        doc["parts_run"].append("rules")
        print_rules(doc["rules"])
    if "sim" in parts:
        try:
            doc["sim"] = sim_rows(args)
            doc["parts_run"].append("sim")
        except NotImplementedError as e:
            print(f"sim part skipped: {e}", flush=True)
    doc.update({"goals": {"coordinator_loads_over_belady_max": GOAL_LOADS_OVER_BELADY,
                          "coordinator_load_seconds_vs_lru_max": GOAL_LOAD_SECONDS_VS_LRU},
                "wall_s": round(time.perf_counter() - t0, 1), "git_commit": git("rev-parse", "--short", "HEAD"),
                "machine": machine_info(), "args": vars(args)})
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
