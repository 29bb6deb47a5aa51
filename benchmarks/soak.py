"""Soak: an open-loop `t2i replay` at a multiple of the measured capacity, then a burst of 96
concurrent requests, with the RSS of every process under `t2i serve` (Ray's workers included)
sampled throughout. Not a CI test.

What it does, end to end, with the real commands:
  1. builds the demo models (`t2i demo-models`), serves their config with `t2i serve` on a free
     port, and writes a Katz-shaped synthetic trace (`t2i trace synth`);
  2. measures capacity: a closed-loop replay of --capacity-requests requests (`t2i replay
     --concurrency-limit C`, all due at once); capacity = completed requests / s. (Bounded by a
     request count, not --duration-s: a replay sends every request due before its duration, so
     arrivals far faster than the service would keep it busy long past it);
  3. soaks: `t2i replay --arrival poisson --rate (multiple x capacity) --duration-s D`, every
     request with a client timeout, no stop on failures in a row (overload answers 503s in a row);
  4. a burst of --burst concurrent requests straight at /v1/images/generations;
  5. prints a table and writes JSON: status-code counts per phase, requests lost (a transport
     error) or hung (the client's timeout), RSS first/last/max per process and its growth.
The goal (issue 12): every request answered with 200 or an explicit 429/503/504, zero lost or
hung, memory flat. The issue asks for 10 minutes (--duration-s 600, the default).

Run: python benchmarks/soak.py [--duration-s 600] [--multiple 2] [--burst 96]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from benchmarks.live_replay import free_port, katz_trace, start_service, stop_service, t2i  # noqa: E402

EXPLICIT = {200, 429, 503, 504}  # what the goal accepts as an answer


class RssSampler:
    """RSS of every process under `root` (the `t2i serve` driver, GCS, raylet, Ray's workers),
    every `every_s`, keyed by pid and the first title seen (a Ray worker's names its actor)."""

    def __init__(self, root_pid: int, every_s: float):
        import psutil

        self.root = psutil.Process(root_pid)
        self.every_s = every_s
        self.series: dict[str, list[tuple[float, int]]] = {}
        self._keys: dict[int, str] = {}  # pid -> key: a worker's title changes with its task
        self.phase_marks: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def mark(self, phase: str) -> None:
        self.phase_marks.append((phase, round(time.monotonic() - self.t0, 1)))

    def sample(self) -> None:
        import psutil

        now = round(time.monotonic() - self.t0, 1)
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                title = " ".join(proc.cmdline()[:1]) or proc.name()
                rss = proc.memory_info().rss
            except psutil.Error:
                continue  # gone between the listing and the read
            key = self._keys.setdefault(proc.pid, f"{proc.pid} {_label(title)}")
            self.series.setdefault(key, []).append((now, rss))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def table(self, min_mib: float = 20.0) -> list[dict]:
        rows = []
        for key, points in self.series.items():
            values = [rss for _, rss in points]
            if max(values) < min_mib * 2**20:
                continue  # helpers (shells, log monitors) would only pad the table
            # growth over the run's second half: start-up and first loads are not a leak
            half = [rss for t, rss in points if t >= points[-1][0] / 2] or values
            rows.append({"process": key, "samples": len(values), "first_mib": _mib(values[0]),
                         "last_mib": _mib(values[-1]), "max_mib": _mib(max(values)),
                         "second_half_growth_mib": _mib(half[-1] - half[0]),
                         "first_t_s": points[0][0], "last_t_s": points[-1][0]})
        return sorted(rows, key=lambda r: -r["max_mib"])


def _label(title: str) -> str:
    if title.startswith("ray::"):  # ray::ServeReplica:t2i:BaseModel[.handle_request]
        return title.split(".")[0]
    return Path(title.split()[0]).name if title else "?"


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def replay(url: str, trace: Path, out: Path, *args: str) -> dict:
    text = t2i("replay", "--trace", str(trace), "--format", "katz", "--url", url, "--out", str(out),
               "--no-progress", "--json", *args, capture=True)
    summary = json.loads(text.strip().splitlines()[-1])
    summary["status_counts"] = status_counts(out / "records.csv")
    return summary


def status_counts(records: Path) -> dict[str, int]:
    """HTTP status per sent request; 'lost' for a transport error, 'hung' for a client timeout."""
    counts: dict[str, int] = {}
    with records.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["outcome"] == "not_sent":
                continue
            key = ("hung" if row["outcome"] == "timeout" else
                   row["http_status"] if row["http_status"] not in ("", "0") else "lost")
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def burst(url: str, n: int, timeout_s: float) -> dict:
    """`n` requests at once (a barrier releases them together); status counts and latencies."""
    gate = threading.Barrier(n)
    body = {"prompt": "a burst", "model": "tiny-sd-light", "size": "32x32"}

    def one(_: int) -> tuple[str, float]:
        gate.wait()
        started = time.perf_counter()
        try:
            status = str(httpx.post(f"{url}/v1/images/generations", json=body, timeout=timeout_s).status_code)
        except httpx.TimeoutException:
            status = "hung"
        except httpx.HTTPError:
            status = "lost"
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    counts: dict[str, int] = {}
    for status, _ in answers:
        counts[status] = counts.get(status, 0) + 1
    latencies = sorted(s for _, s in answers)
    return {"requests": n, "status_counts": dict(sorted(counts.items())),
            "latency_max_s": round(latencies[-1], 3), "latency_p50_s": round(latencies[n // 2], 3)}


def unanswered(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if not (k.isdigit() and int(k) in EXPLICIT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration-s", type=float, default=600.0, help="open-loop soak length")
    ap.add_argument("--multiple", type=float, default=2.0, help="arrival rate / measured capacity")
    ap.add_argument("--capacity-requests", type=int, default=40, help="closed-loop capacity run size")
    ap.add_argument("--capacity-concurrency", type=int, default=4)
    ap.add_argument("--burst", type=int, default=96, help="concurrent requests in the burst")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="client timeout per request: "
                    "an answer later than this counts as hung")
    ap.add_argument("--sample-every-s", type=float, default=2.0, help="RSS sampling period")
    ap.add_argument("--replicas", type=int, default=1, help="BaseModel replicas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="t2i-soak-"))
    models = work / "models"
    t2i("demo-models", "--out", str(models), "--replicas", str(args.replicas), "--quiet")
    config = models / "config.yaml"
    trace = katz_trace(work / "katz.json", 2000, args.seed + 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.time()
    proc = start_service(config, port, work / "serve.log")
    try:
        with RssSampler(proc.pid, args.sample_every_s) as rss:
            rss.mark("capacity")
            capacity_run = replay(url, trace, work / "capacity", "--arrival", "poisson", "--rate", "1000",
                                  "--concurrency-limit", str(args.capacity_concurrency),
                                  "--max-requests", str(args.capacity_requests),
                                  "--timeout-s", str(args.timeout_s), "--seed", str(args.seed))
            capacity = capacity_run["request_throughput"]
            rate = args.multiple * capacity
            print(f"capacity {capacity:.2f} req/s (closed loop, {args.capacity_concurrency} in flight); "
                  f"soaking at {rate:.2f} req/s for {args.duration_s:.0f} s")
            rss.mark("soak")
            soak = replay(url, trace, work / "soak", "--arrival", "poisson", "--rate", f"{rate:.4f}",
                          "--duration-s", str(args.duration_s),
                          "--max-requests", str(int(rate * args.duration_s * 2) + 10),
                          "--max-failures", "1000000000", "--timeout-s", str(args.timeout_s),
                          "--skip", str(capacity_run["sent"]), "--seed", str(args.seed + 1))
            rss.mark("burst")
            bursted = burst(url, args.burst, args.timeout_s)
            rss.mark("end")
        after = httpx.get(f"{url}/readyz", timeout=10).status_code
    finally:
        stop_service(proc)

    rows = rss.table()
    lost_or_hung = unanswered(soak["status_counts"]) + unanswered(bursted["status_counts"])
    doc = {
        "benchmark": "soak",
        "goal": "every request answered (200 or an explicit 429/503/504), zero lost or hung, "
                "RSS flat; the issue asks for a 10-minute soak at 2x capacity",
        "machine": machine_info(),
        "args": vars(args),
        "capacity_rps": round(capacity, 3),
        "soak_rate_rps": round(rate, 3),
        "capacity_run": _brief(capacity_run),
        "soak": _brief(soak),
        "burst": bursted,
        "unanswered": lost_or_hung,
        "readyz_after": after,
        "phases_t_s": rss.phase_marks,
        "rss": rows,
        "wall_s": round(time.time() - started, 1),
    }
    print(f"\n{'phase':10} {'sent':>6} status counts")
    print(f"{'capacity':10} {capacity_run['sent']:6d} {capacity_run['status_counts']}")
    print(f"{'soak':10} {soak['sent']:6d} {soak['status_counts']}")
    print(f"{'burst':10} {bursted['requests']:6d} {bursted['status_counts']}")
    print(f"unanswered (lost or hung): {lost_or_hung}; /readyz after: {after}")
    print(f"\n{'process':48} {'first':>8} {'last':>8} {'max':>8} {'2nd-half':>9}  MiB")
    for r in rows:
        print(f"{r['process'][:48]:48} {r['first_mib']:8.1f} {r['last_mib']:8.1f} {r['max_mib']:8.1f} "
              f"{r['second_half_growth_mib']:+9.1f}")
    write_result(args.out, doc)
    return 0 if lost_or_hung == 0 else 1


def _brief(summary: dict) -> dict:
    keys = ("planned", "sent", "not_sent", "failed", "timed_out", "stop_reason", "duration_s",
            "request_throughput", "latency_p50_s", "latency_p95_s", "latency_max_s",
            "send_lag_p99_s", "status_counts", "errors")
    return {k: summary[k] for k in keys if k in summary}


if __name__ == "__main__":
    sys.exit(main())
