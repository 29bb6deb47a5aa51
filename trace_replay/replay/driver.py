"""Open-loop replay of mapped trace requests against a running service (asyncio + httpx).

Open loop: request i is sent at its arrival time whatever earlier responses do, as users arrive
in production; a slow service builds a queue instead of slowing the sender down (a closed-loop
driver would hide exactly the overload an SLO measures). ``concurrency_limit`` is the one
exception, for runs that must cap in-flight requests: a request waiting for a slot keeps its
arrival time, so the wait counts in its latency.

The run stops by itself: after the last request, or at ``duration_s`` (requests not yet due are
not sent), or after ``max_failures`` failures in a row (connection refused, 5xx, timeouts): then
nothing more is sent and requests in flight are cancelled and recorded as failed. Every request
sent is recorded as completed, failed or timed out; the report says which.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from trace_replay.replay.mapping import ReplayRequest

STAGES = ("queue_s", "load_s", "preprocess_s", "inference_s", "discriminator_s", "total_s")
# parts of load_s the service reports: adapters fetched from the LoRA store, adapters copied to
# the device or swapped into slots, the previous request's merged adapters taken out, this
# request's merged in; the rest of load_s is model loads (base pipelines, ControlNets, from disk
# or the host tier) and waits for room
LOAD_PARTS = ("fetch_s", "swap_s", "unmerge_s", "merge_s")
# part of queue_s: the wait for one of the machine's compute slots (control.compute_slots)
QUEUE_PARTS = ("slot_s",)


@dataclass
class Record:
    """One request's outcome. Times are seconds from the replay start (monotonic clock)."""

    index: int
    scheduled_s: float
    base_model: str
    n_loras: int
    n_controlnets: int
    steps: int
    sent_s: float = float("nan")
    done_s: float = float("nan")
    outcome: str = "not_sent"  # completed | failed | timeout | not_sent
    http_status: int = 0
    error: str = ""
    model: str = ""  # who answered (the cascade's heavy model when it re-ran)
    replica: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """Arrival (scheduled send) to response: a request that waited for a send slot or a
        connection carries that wait, as a user would."""
        return self.done_s - self.scheduled_s


@dataclass
class RunResult:
    records: list[Record]
    started_wall: float  # time.time() at the replay start
    duration_s: float
    stop_reason: str  # "finished" | "duration" | "failures: ..."
    aborted: bool


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def _one(client: httpx.AsyncClient, url: str, body: dict, rec: Record, t0: float,
               timeout_s: float, sem: asyncio.Semaphore | None) -> None:
    loop = asyncio.get_running_loop()
    if sem is not None:
        await sem.acquire()
    try:
        rec.sent_s = loop.time() - t0
        resp = await client.post(url, json=body, timeout=timeout_s)
        rec.done_s = loop.time() - t0
        rec.http_status = resp.status_code
        try:
            doc = resp.json()
        except ValueError:
            doc = {}
        if resp.status_code == 200:
            rec.outcome = "completed"
            rec.model = str(doc.get("model", ""))
            rec.replica = str((doc.get("t2i") or {}).get("replica") or "")
            rec.timings = {k: float(v) for k, v in (doc.get("timings") or {}).items()
                           if k in STAGES or k in LOAD_PARTS or k in QUEUE_PARTS}
        else:
            rec.outcome = "failed"
            err = doc.get("error") if isinstance(doc, dict) else None
            rec.error = (err.get("message") if isinstance(err, dict) else resp.text)[:300]
    except httpx.TimeoutException as exc:
        rec.done_s = loop.time() - t0
        rec.outcome, rec.error = "timeout", _describe(exc)
    except asyncio.CancelledError:
        rec.done_s = loop.time() - t0
        rec.outcome, rec.error = "failed", "cancelled: the run was aborted while in flight"
        raise
    except httpx.HTTPError as exc:
        rec.done_s = loop.time() - t0
        rec.outcome, rec.error = "failed", _describe(exc)
    finally:
        if sem is not None:
            sem.release()


async def replay(requests: list[ReplayRequest], url: str, *, control_image_b64: str | None = None,
                 duration_s: float | None = None, timeout_s: float = 120.0,
                 concurrency_limit: int | None = None, max_failures: int = 20,
                 on_done=None) -> RunResult:
    """Send ``requests`` at their ``time_s`` to ``url``/v1/images/generations; see module doc.

    ``on_done(record)`` is called as each request ends (the CLI's progress bar)."""
    if max_failures < 1:
        raise ValueError("max_failures must be >= 1")
    endpoint = url.rstrip("/") + "/v1/images/generations"
    records = [Record(r.index, r.time_s, r.base_model, len(r.loras), len(r.controlnets), r.steps)
               for r in requests]
    limits = httpx.Limits(max_connections=concurrency_limit or 1000, max_keepalive_connections=100)
    sem = asyncio.Semaphore(concurrency_limit) if concurrency_limit else None
    loop = asyncio.get_running_loop()
    failures_in_row = 0
    stop = asyncio.Event()
    reason = "finished"
    tasks: set[asyncio.Task] = set()

    def ended(rec: Record) -> None:
        nonlocal failures_in_row, reason
        if rec.outcome == "completed":
            failures_in_row = 0
        elif rec.outcome in ("failed", "timeout") and not stop.is_set():
            failures_in_row += 1
            if failures_in_row >= max_failures:
                reason = (f"failures: {failures_in_row} requests in a row failed; last: "
                          f"{rec.outcome} {rec.http_status or ''} {rec.error}".strip())
                stop.set()
        if on_done is not None:
            on_done(rec)

    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        # Open a connection before the clock starts: the first request would otherwise carry
        # the connection setup (tens of ms late on this machine) that a warm client never pays.
        try:
            await client.get(url.rstrip("/") + "/healthz", timeout=min(timeout_s, 10.0))
        except httpx.HTTPError:
            pass  # an unreachable service shows in the requests' own outcomes
        started_wall = time.time()
        t0 = loop.time()
        for req, rec in zip(requests, records):
            if duration_s is not None and req.time_s > duration_s:
                reason = "duration"
                break
            delay = t0 + req.time_s - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
            if stop.is_set():
                break
            task = asyncio.create_task(_one(client, endpoint, req.body(control_image_b64), rec, t0,
                                            timeout_s, sem))
            task.add_done_callback(lambda _t, rec=rec: ended(rec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks and not stop.is_set():
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait(set(tasks) | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        for task in list(tasks):  # aborted: what is still in flight is cancelled, and recorded
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return RunResult(records, started_wall, loop.time() - t0, reason, stop.is_set())
