"""Ingress: FastAPI under Ray Serve. Validates, resolves the pipeline, calls the DAG, encodes PNGs.

Every request the service cannot serve as asked gets a 4xx in the OpenAI error shape whose `param`
names the field; a model that fails to load is a 500 naming the model, and the replica keeps
serving everything else. Error messages are one line for the client: a replica's traceback, actor
ids and paths go to the log only, under the request id the response carries.
"""


import asyncio
import base64
import binascii
import io
import logging
import re
import secrets
import time
import uuid
from dataclasses import replace

import numpy as np
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import ServeConfig
from app.admission import TIMEOUT_HEADER, InflightLimit, OverloadedError, request_timeout_s
from app.cascade_client import CascadeClient
from app.auth import ADMIN_KEY, API_KEY, AccessKeys, BearerAuthMiddleware
from app.limits import BodyLimitMiddleware
from app.resolve import resolve_request
from app.schemas import CachePinRequest, ImageGenerationRequest, error_body
from deployments.errors import (CoordinatorUnavailableError, DeadlineExceededError, ModelLoadError,
                                RequestError)
from deployments.model_cache import CacheBudgetError
from deployments.spec import GenerationSpec

logger = logging.getLogger("ray.serve")
api = FastAPI(title="t2i", description="OpenAI-compatible text-to-image serving on Ray Serve. "
              "When the deployment configures API keys, /v1/* needs `Authorization: Bearer <key>`;"
              " the cache pin/unpin endpoints need an admin key when admin keys are configured.")


def _serving_ingress() -> "Ingress":
    """The replica's Ingress (what Ray's class-based view injects as `self`)."""
    return serve.get_replica_context().servable_object


api.add_middleware(BodyLimitMiddleware,  # added first: runs after auth
                  max_bytes=lambda: _serving_ingress().config.limits.max_body_bytes)
api.add_middleware(BearerAuthMiddleware, keys=lambda: _serving_ingress().access)


def _cause(exc: BaseException) -> BaseException:
    """The replica's own exception under Ray's wrapper: str() of a RayTaskError (and of the
    typed subclass Ray re-raises) is the whole remote traceback, not the error's message."""
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _request_id(request: Request) -> tuple[str, dict]:
    """Ray Serve's proxy gives each request an id (and returns it as X-Request-Id itself);
    without one (no proxy) a fresh id goes into the response header here."""
    incoming = request.headers.get("x-request-id", "")
    if _REQUEST_ID.fullmatch(incoming):  # a client may send its own: only a plain id reaches the log
        return incoming, {}
    fresh = uuid.uuid4().hex
    return fresh, {"X-Request-Id": fresh}


def _param(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = _param(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "extra_forbidden":
        message = f"{param}: unknown field (not part of this API)"
    return JSONResponse(status_code=400, content=error_body(message, param))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # routing's 404 (unknown path) and 405 (wrong method, with its Allow header)
    kind = {404: "not_found_error", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
    message = {404: "unknown route; the API is under /v1 (see /docs)",
               405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                        content=error_body(message, None, kind))


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    cause = _cause(exc)
    return JSONResponse(status_code=400, content=error_body(str(cause), getattr(cause, "field", None)))


class CacheOffError(Exception):
    """The /v1/cache endpoints need the coordinator control plane."""


@api.exception_handler(CacheOffError)
async def _cache_off(_: Request, exc: CacheOffError) -> JSONResponse:
    return JSONResponse(status_code=409, content=error_body(
        "the cache coordinator is off: this deployment runs control.policies: ray-default "
        "(start it with --policies coordinator)", None, "cache_coordinator_off"))


class CascadeOffError(Exception):
    """GET /v1/cascade with no cascade configured."""


@api.exception_handler(CascadeOffError)
async def _cascade_off(_: Request, exc: CascadeOffError) -> JSONResponse:
    return JSONResponse(status_code=404, content=error_body(
        "no cascade is configured (cascade.light, cascade.heavy and cascade.discriminator)", None,
        "cascade_not_configured"))


@api.exception_handler(CoordinatorUnavailableError)
async def _coordinator_away(_: Request, exc: CoordinatorUnavailableError) -> JSONResponse:
    return JSONResponse(status_code=503, headers={"Retry-After": "2"}, content=error_body(
        f"the cache coordinator is unavailable ({exc.reason}); serving continues on the replicas' "
        "local decisions, retry shortly", None, "cache_coordinator_unavailable"))


@api.exception_handler(CacheBudgetError)
async def _no_room(_: Request, exc: CacheBudgetError) -> JSONResponse:
    # capacity, not a bad request: the same request can succeed once pins or load move
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content=error_body(f"model {exc.model_id!r} cannot be loaded: {exc.reason}",
                                           None, "capacity_error"))


@api.exception_handler(OverloadedError)
async def _overloaded(_: Request, exc: OverloadedError) -> JSONResponse:
    return JSONResponse(status_code=503, headers=_retry_after(exc.retry_after_s), content=error_body(
        str(exc), None, "overloaded_error"))


@api.exception_handler(ObjectLostError)
@api.exception_handler(RayActorError)
async def _replica_gone(request: Request, exc: Exception) -> JSONResponse:
    # A replica died (or became unreachable) under the request: ActorDiedError from the handle,
    # or a downstream replica's death re-raised through BaseModel; OwnerDiedError (an
    # ObjectLostError) when the LoRA store died while its adapter object was being fetched. Not
    # retried here: the replacement takes a replica start (seconds to tens of seconds with its
    # model warm-up), most of a request's deadline, and a request that killed its replica would
    # kill the next.
    request_id, headers = _request_id(request)
    logger.warning("request %s: a replica went away (%s)", request_id, type(_cause(exc)).__name__,
                   exc_info=exc)
    return JSONResponse(status_code=503, headers={**headers, **_retry_after(None)}, content=error_body(
        f"a replica serving this request went away and is being replaced (request id "
        f"{request_id}); the request was not completed, retry it", None, "replica_unavailable"))


def _retry_after(seconds: float | None) -> dict:
    if seconds is None:
        seconds = _serving_ingress().config.limits.retry_after_s
    return {"Retry-After": str(max(1, int(-(-seconds // 1))))}


@api.exception_handler(DeadlineExceededError)
async def _deadline(_: Request, exc: DeadlineExceededError) -> JSONResponse:
    return JSONResponse(status_code=504, content=error_body(
        f"{_cause(exc)} (deadline: limits.request_timeout_s, or the {TIMEOUT_HEADER} header)",
        None, "deadline_exceeded"))


# An absolute path in a message (a loader's exception text often carries the file it read)
_ABS_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s'\"/]+/)+([^\s'\"/]*)")


def without_paths(message: str) -> str:
    """`message` with each absolute path cut to its last part: where the server keeps its files
    is the operator's business (the log has the full text)."""
    return _ABS_PATH.sub(lambda m: f".../{m.group(1)}", message)


@api.exception_handler(ModelLoadError)
async def _load_error(request: Request, exc: ModelLoadError) -> JSONResponse:
    request_id, headers = _request_id(request)
    message = str(_cause(exc))
    logger.error("request %s: %s", request_id, message)
    return JSONResponse(status_code=500, headers=headers,
                        content=error_body(without_paths(message), None, "model_load_error"))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Ray re-raises replica errors as subclasses of the original type, so the typed handlers
    # above still match them; anything else is a server fault: JSON with an id, never a hang,
    # and the details (a replica's traceback, paths) in the log only.
    request_id, headers = _request_id(request)
    logger.error("request %s failed (%s %s)", request_id, request.method, request.url.path,
                 exc_info=exc)
    return JSONResponse(status_code=500, headers=headers, content=error_body(
        f"internal server error (request id {request_id}); the details are in the server log",
        None, "server_error"))


def encode_png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_b64_image(data: str, field: str, max_bytes: int) -> bytes:
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    if len(data) * 3 // 4 > max_bytes:
        raise RequestError(field, f"image is larger than limits.max_image_bytes={max_bytes}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64") from None


class Ingress:
    def __init__(self, config: "dict | ServeConfig", base_model, controlnet=None, lora_store=None,
                 discriminator=None, access: AccessKeys | None = None):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        # the builder loads the keys where the config is read; alone, the ingress reads them here
        self.access = access if access is not None else AccessKeys.load(self.config.security)
        self.base_model = base_model
        self.controlnet = controlnet
        self.lora_store = lora_store
        self.discriminator = discriminator
        self.started = time.time()
        self.inflight = InflightLimit(self.config.limits.max_inflight_requests)
        self.cascade_plan = CascadeClient(
            self.config, lambda report: self.base_model.coordinator_call.remote("cascade_report", report))
        self._warm: asyncio.Future | None = None
        try:  # under Serve the constructor runs on the replica's event loop: warm up right away
            self._warm = asyncio.get_running_loop().create_task(self._warm_up())
        except RuntimeError:
            pass  # constructed outside an event loop (unit tests): the first health check does it

    async def models(self) -> dict:
        """The registry and what a client needs to build accepted requests (``ServeConfig.models_document``)."""
        return self.config.models_document()

    async def healthz(self) -> dict:
        """Up, and warm: waits for the start-up warm-up, one cheap call through each handle,
        because the first call through a fresh handle cost seconds (8.6 s for the first image
        request of a fresh service on this machine, 0.3 s for the second)."""
        stale = self._warm is not None and self._warm.done() and (
            self._warm.cancelled() or self._warm.exception() is not None)
        if self._warm is None or stale:
            # again after a failure, or after Serve cancelled the request that started it (a
            # client that gave up): a cancelled warm-up must not answer every later check
            self._warm = asyncio.ensure_future(self._warm_up())
        warm = await asyncio.shield(self._warm)
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1), "warm_up_s": warm}

    READY_TIMEOUT_S = 2.0

    async def readiness(self) -> tuple[bool, dict]:
        """Whether every deployment behind this ingress answers a cheap call within
        READY_TIMEOUT_S, per deployment: {"ready": bool, "latency_s" or "reason": ...}."""
        probes = {"BaseModel": (self.base_model, "ready"), "ControlNet": (self.controlnet, "ready"),
                  "LoRAStore": (self.lora_store, "stats"),
                  "Discriminator": (self.discriminator, "ready")}

        async def probe(handle, method: str) -> dict:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(getattr(handle, method).remote(), self.READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                return {"ready": False, "reason": f"no answer within {self.READY_TIMEOUT_S:g} s"}
            except Exception as exc:  # a dead or failing replica: the reason, not the traceback
                logger.warning("readiness probe %s failed", method, exc_info=exc)
                return {"ready": False, "reason": f"{type(_cause(exc)).__name__} on {method}()"}
            return {"ready": True, "latency_s": round(time.perf_counter() - started, 4)}

        names = [name for name, (handle, _) in probes.items() if handle is not None]
        results = await asyncio.gather(*(probe(*probes[name]) for name in names))
        states = dict(zip(names, results))
        return all(s["ready"] for s in states.values()), states

    async def cache(self, action: str = "view", body: CachePinRequest | None = None) -> dict:
        """The coordinator's view, or an operator's pin/unpin, through a BaseModel replica (the
        coordinator is that deployment's deployment-scoped actor, reachable from its replicas)."""
        if self.config.control.policies != "coordinator":
            raise CacheOffError()
        if body is not None:
            for index, model_id in enumerate(body.models):
                if model_id not in self.config.ids("base") + self.config.ids("controlnet"):
                    raise RequestError(f"models[{index}]", f"{model_id!r} is not a base model or "
                                       "ControlNet of this deployment")
            if action == "unpin" and body.replicas is not None:
                raise RequestError("replicas", "unpin removes a model's pins on every replica")
        args = () if body is None else (body.models, body.replicas) if action == "pin" else (body.models,)
        return await self.base_model.coordinator_call.remote(action, *args)

    async def cascade(self) -> dict:
        """GET /v1/cascade's body: the coordinator's plan, or the fixed threshold when the planner
        is off (cascade.planner: fixed, or control.policies: ray-default)."""
        cfg = self.config.cascade
        if not self.config.cascade_ready():
            raise CascadeOffError()
        doc = {"light": cfg.light, "heavy": cfg.heavy, "discriminator": cfg.discriminator,
               "enabled_by_default": cfg.enabled}
        if not self.cascade_plan.enabled:
            why = ("cascade.planner: fixed" if cfg.planner == "fixed"
                   else "control.policies: ray-default (the planner runs in the coordinator)")
            return {**doc, "planner": "off", "why": why, "plan": self.cascade_plan.config_plan()}
        plan = await self.base_model.coordinator_call.remote("cascade_view")
        return {**doc, "planner": "demand", "plan": plan,
                "ingress_plan_source": self.cascade_plan.plan["source"]}

    async def _warm_up(self) -> float:
        started = time.perf_counter()
        calls = [h.ready.remote() for h in (self.base_model, self.controlnet) if h is not None]
        if self.lora_store is not None:
            calls.append(self.lora_store.stats.remote())
        await asyncio.gather(*calls)
        return round(time.perf_counter() - started, 3)

    async def _control_images(self, body: ImageGenerationRequest, width: int, height: int):
        uploads = []
        for index, ref in enumerate(body.controlnets):
            field = f"controlnets[{index}].image"
            raw = decode_b64_image(ref.image, field, self.config.limits.max_image_bytes)
            preprocessor = ref.preprocessor or self.config.entry(ref.id).default_preprocessor
            uploads.append(self.controlnet.preprocess.remote(raw, preprocessor, width, height, field))
        return list(await asyncio.gather(*uploads))

    async def _generate(self, spec: GenerationSpec, control_images) -> object:
        handle = self.base_model.options(multiplexed_model_id=spec.base_model)
        return await handle.generate.remote(spec, control_images)

    # Past the deadline the ingress waits this much longer for BaseModel's own answer, which
    # says where the work was dropped (queued or running); then it stops waiting regardless.
    DEADLINE_GRACE_S = 0.5

    async def generate_by(self, body: ImageGenerationRequest, deadline: float) -> tuple[dict, dict]:
        """generate() with a deadline (time.time()): it travels in the specs, so BaseModel drops
        late work, and it bounds the ingress's own wait, so nothing hangs on a stuck call."""
        bound = max(deadline - time.time(), 0.0) + self.DEADLINE_GRACE_S
        try:
            return await asyncio.wait_for(self.generate(body, deadline), bound)
        except BackPressureError as exc:
            # a deployment's bounded queue is full: shed the request. Raised again as our own
            # error because Ray's replica registers its own (plain-text) handler for this class
            # on the ingress's FastAPI app, over any the app registers.
            cause = _cause(exc)
            raise OverloadedError("the service is overloaded (a model deployment's queue is full, "
                                  "deployments.*.max_queued_requests); retry shortly",
                                  getattr(cause, "retry_after_s", None)) from None
        except asyncio.TimeoutError:  # cancels the awaited calls; BaseModel drops their work
            raise DeadlineExceededError("waited on at the ingress", time.time() - deadline) from None

    async def generate(self, body: ImageGenerationRequest,
                       deadline: float | None = None) -> tuple[dict, dict]:
        started = time.perf_counter()
        plan = resolve_request(self.config, body, seed=secrets.randbelow(2**31))
        if deadline is not None:
            plan = replace(plan, specs=[replace(s, deadline=deadline) for s in plan.specs])
        timings = {"queue_s": 0.0, "load_s": 0.0, "preprocess_s": 0.0, "inference_s": 0.0,
                   "discriminator_s": 0.0}
        first = plan.specs[0]
        arrived_at = self.cascade_plan.clock()
        if plan.cascade:
            self.cascade_plan.start()
            self.cascade_plan.arrived()
        t0 = time.perf_counter()
        controls = await self._control_images(body, first.width, first.height) if body.controlnets else None
        timings["preprocess_s"] = time.perf_counter() - t0

        result = await self._generate(first, controls)
        _add(timings, result.timings)
        images, answered_by = list(result.images), [first.base_model] * len(result.images)
        replicas = [result.replica] * len(result.images)
        cascade_info = None
        if plan.cascade:
            cascade_info = await self._cascade(body, plan, result, images, answered_by, replicas,
                                               timings, controls, arrived_at)
        # PNG encoding of a large image takes tens of ms: off the event loop, which other
        # requests share.
        encoded = await asyncio.to_thread(lambda: [encode_png(img) for img in images])
        timings["total_s"] = time.perf_counter() - started
        response = {
            "created": int(time.time()),
            "data": [{"b64_json": b64, "revised_prompt": None} for b64 in encoded],
            "model": answered_by[0],
            "timings": {k: round(v, 6) for k, v in timings.items()},
            "t2i": {"seed": first.seed, "base_model": first.base_model, "size": f"{first.width}x{first.height}",
                    "steps": first.steps, "loras": [list(x) for x in first.loras],
                    "controlnets": [list(x) for x in first.controlnets], "cascade": cascade_info,
                    "adapters_swapped": result.adapters_swapped, "replica": replicas[0]},
        }
        headers = {"Server-Timing": ", ".join(
            f"{k.removesuffix('_s')};dur={v * 1000:.1f}" for k, v in timings.items())}
        return response, headers

    async def _cascade(self, body, plan, result, images, answered_by, replicas, timings, controls,
                       arrived_at: float) -> dict:
        """Score the light images; regenerate with the heavy model those the plan defers (in place
        in ``images``, ``answered_by``, ``replicas``); what the response says about it."""
        client = self.cascade_plan
        t0 = time.perf_counter()
        scores = await self.discriminator.score.remote(images, self.config.cascade.discriminator)
        disc_s = time.perf_counter() - t0
        timings["discriminator_s"] = disc_s
        light_timings = result.timings
        client.light_done(light_timings.get("inference_s", 0.0) + disc_s / max(len(images), 1),
                          light_timings.get("queue_s", 0.0), scores)
        if body.cascade_threshold is not None:  # the request's own threshold: no plan, no overload rule
            threshold, source = plan.threshold, "request"
            rejected = [i for i, s in enumerate(scores) if s < threshold]
        else:
            threshold, source = client.threshold, client.plan["source"]
            rejected = [i for i, s in enumerate(scores) if client.defer(s, arrived_at)]
        heavy = plan.specs[1]
        # under the planner a deferred image not back by the SLO is answered with its light image
        # (on time at lower quality), as the simulator's planner does; otherwise the heavy answer
        # is waited for up to the request's deadline
        slo_bound = source == "planner" and client.enabled
        client.heavy_inflight += len(rejected)
        tasks = [asyncio.ensure_future(self._generate(_single(heavy, heavy.seed + i), controls)) for i in rejected]
        try:
            if tasks:
                budget = arrived_at + self.config.slo.latency_s - client.clock() if slo_bound else None
                done, _ = await asyncio.wait(tasks, timeout=None if budget is None else max(budget, 0.0))
                for task in done:
                    task.result()  # a failed rerun fails the request, as before
        finally:  # late reruns (and all of them if this request is cancelled) stop; BaseModel drops them
            for task in tasks:
                if not task.done():
                    task.cancel()
            client.heavy_inflight -= len(rejected)
        answered_heavy = []
        for i, task in zip(rejected, tasks):
            if task.cancelled() or not task.done():
                continue
            rerun = task.result()
            _add(timings, rerun.timings)
            client.heavy_done(rerun.timings.get("inference_s", 0.0), rerun.timings.get("queue_s", 0.0))
            images[i], answered_by[i], replicas[i] = rerun.images[0], heavy.base_model, rerun.replica
            answered_heavy.append(i)
        kept = [i for i, s in enumerate(scores) if s < threshold and i not in answered_heavy]
        client.answered(light=len(images) - len(answered_heavy), heavy=len(answered_heavy))
        return {"light": plan.specs[0].base_model, "heavy": heavy.base_model, "threshold": round(threshold, 6),
                "threshold_source": source, "scores": [round(s, 6) for s in scores], "deferred": answered_heavy,
                "kept_for_slo": kept, "answered_by": answered_by}


def _add(timings: dict, replica: dict) -> None:
    """Replica timings add up over model calls (a cascade's reruns included)."""
    for key in ("queue_s", "load_s", "inference_s"):
        timings[key] += replica.get(key, 0.0)
    # fetch_s, swap_s, unmerge_s and merge_s are parts of load_s (the LoRAs' fetch from the store;
    # their copy or swap; the previous request's merged LoRAs out of the weights; these in)
    for key in ("fetch_s", "swap_s", "unmerge_s", "merge_s", "slot_s"):  # slot_s: part of queue_s
        if key in replica:
            timings[key] = timings.get(key, 0.0) + replica[key]


def _single(spec: GenerationSpec, seed: int) -> GenerationSpec:
    from dataclasses import replace

    return replace(spec, n=1, seed=seed)


_ADMIN_ONLY = ("Admin endpoint: needs an admin key when the deployment configures admin keys "
               "(403 for a valid API key that is not one), else an API key when API keys are "
               "configured.")


@serve.ingress(api)
class T2IIngress(Ingress):
    """The Serve ingress: FastAPI routes bound to an Ingress instance."""

    @api.post("/v1/images/generations", dependencies=[Security(API_KEY)])
    async def images_generations(self, body: ImageGenerationRequest, request: Request) -> JSONResponse:
        timeout = request_timeout_s(request.headers.get(TIMEOUT_HEADER), self.config.request_timeout_s())
        with self.inflight.admit():  # over the limit: 503 at once, before any work
            response, headers = await self.generate_by(body, time.time() + timeout)
        return JSONResponse(content=response, headers=headers)

    @api.get("/v1/models", dependencies=[Security(API_KEY)])
    async def list_models(self) -> dict:
        return await self.models()

    @api.get("/v1/cache", dependencies=[Security(API_KEY)])
    async def cache_view(self) -> dict:
        return await self.cache("view")

    @api.post("/v1/cache/pin", dependencies=[Security(ADMIN_KEY)], description=_ADMIN_ONLY)
    async def cache_pin(self, body: CachePinRequest) -> dict:
        return await self.cache("pin", body)

    @api.post("/v1/cache/unpin", dependencies=[Security(ADMIN_KEY)], description=_ADMIN_ONLY)
    async def cache_unpin(self, body: CachePinRequest) -> dict:
        return await self.cache("unpin", body)

    @api.get("/v1/cascade", dependencies=[Security(API_KEY)])
    async def cascade_view(self) -> dict:
        """The cascade's plan in force: the threshold, the deferred share and the replicas per stage,
        the demand it was made for, and the measured stage service times."""
        return await self.cascade()

    @api.get("/healthz", include_in_schema=False)
    async def health(self) -> dict:
        """Liveness: the ingress answers (and has warmed its handles)."""
        return await self.healthz()

    @api.get("/readyz", include_in_schema=False)
    async def ready(self) -> JSONResponse:
        """Readiness: every deployment answers; 503 naming the ones that do not."""
        ready, states = await self.readiness()
        if ready:
            return JSONResponse(content={"ready": True, "deployments": states})
        failing = ", ".join(f"{name} ({s['reason']})" for name, s in states.items() if not s["ready"])
        body = error_body(f"not ready: {failing}", None, "service_unavailable")
        return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                            content={**body, "deployments": states})
