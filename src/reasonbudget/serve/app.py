"""The OpenAI-compatible HTTP server: `create_app(model)` and the routes.

    POST /v1/chat/completions   thinking in message.reasoning_content (and .reasoning), answer in content
    POST /v1/completions        raw continuation, or a method when the request asks for thinking
    POST /v1/responses          OpenAI's Responses API: reasoning and message output items (`serve.responses`)
    GET  /v1/models, GET /health
Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; user mistakes are 4xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reasonbudget.engine.engine import Engine, PromptTooLongError
from reasonbudget.methods.base import METHODS
from reasonbudget.rewards.base import PRMUnavailable
from reasonbudget.models.registry import LoadedModel, build_chat_prompt
from reasonbudget.serve.jobs import Cancelled, Job
from reasonbudget.serve.limits import BodySizeLimit
from reasonbudget.serve import responses as rs
from reasonbudget.serve.requests import Plan, ServeConfig, plan_request
from reasonbudget.serve.scheduler import QueueFull, Scheduler, SchedulerConfig
from reasonbudget.serve.schema import ChatRequest, CompletionRequest, GenerationFields
from reasonbudget.serve.thinking import RequestError
from reasonbudget.types import MethodResult


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    code = {404: "model_not_found", 413: "request_too_large", 503: "overloaded"}.get(status)
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    field = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {first.get('msg', 'invalid value')}{more}", field


def _finish(reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(reason, reason)


def _usage(result: MethodResult) -> dict[str, Any]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": u.thinking_tokens}}


def _extra(result: MethodResult, plan: Plan) -> dict[str, Any]:
    """The project's full usage, under its own key (OpenAI clients keep unknown keys as extras)."""
    return {"method": plan.method, "budget": plan.budget, "seed": plan.seed, "usage": result.usage.to_dict(),
            "finish_reason": result.finish_reason}


def create_app(model: LoadedModel, config: ServeConfig = ServeConfig(),
               scheduler_config: SchedulerConfig = SchedulerConfig()) -> FastAPI:
    scheduler = Scheduler(Engine(model), scheduler_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="reasonbudget", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible endpoints with per-request thinking budgets and methods.")
    app.state.scheduler, app.state.model = scheduler, model
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return error_response(400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(400, str(exc), exc.param)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name, "queued": scheduler.queue.qsize() + len(scheduler.pending),
                "running": scheduler.running, "batches": scheduler.batches}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        prof = model.profile
        card = {"id": model.name, "object": "model", "created": 0, "owned_by": "reasonbudget",
                "max_model_len": model.context_length,
                "reasonbudget": {"thinking_budget": True, "methods": sorted(METHODS),
                                 "profile": dataclasses.asdict(prof)}}  # the whole reasoning format
        return {"object": "list", "data": [card]}

    def check_model(req: GenerationFields) -> None:
        if req.model != model.name:
            raise _NotFound(f"model {req.model!r} is not served here; available: {model.name}")

    async def run(request: Request, req: GenerationFields, prompt, raw_text: bool, kind: str,
                  responses_req: rs.ResponsesRequest | None = None):
        body = await request.json()
        plan = plan_request(req, body, prompt, model, config, raw_text=raw_text)
        loop = asyncio.get_running_loop()
        job = Job(prompt=prompt, max_tokens=plan.max_tokens, sampling=plan.sampling, seed=plan.seed,
                  method=plan.method, budget=plan.budget, stop=plan.stop, starts_in_answer=plan.starts_in_answer,
                  logprobs=plan.logprobs,
                  stream=req.stream, loop=loop, events=asyncio.Queue() if req.stream else None,
                  future=loop.create_future())
        try:
            scheduler.submit(job)
        except QueueFull:
            return error_response(503, "the server's queue is full; retry shortly", kind="server_overloaded",
                                  headers={"Retry-After": str(config.retry_after_seconds)})
        if responses_req is not None:
            return await _respond(request, job, plan, responses_req)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(request, job, plan, rid, kind, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await _wait(request, job)
        if isinstance(result, JSONResponse):
            return result
        return _response(result, plan, rid, kind, raw_text and plan.method is None)

    async def _wait(request: Request, job: Job):
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()
        try:
            return job.future.result()
        except Cancelled:
            return error_response(499, "the client closed the request")
        except PRMUnavailable as e:  # a scorer this request named is down: its failure, not the server's
            return error_response(502, str(e), "method_config", kind="upstream_error")
        except (PromptTooLongError, ValueError) as e:
            return error_response(400, str(e))
        except Exception as e:  # noqa: BLE001 - a failed batch answers 500 and the server keeps serving
            return error_response(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error")

    def _response(result: MethodResult, plan: Plan, rid: str, kind: str, raw: bool) -> dict[str, Any]:
        common = {"id": rid, "created": int(time.time()), "model": model.name, "usage": _usage(result),
                  "reasonbudget": _extra(result, plan)}
        finish = _finish(result.finish_reason)
        if kind == "chat":
            message = {"role": "assistant", "content": result.answer, "reasoning_content": result.thinking,
                       "reasoning": result.thinking}
            return {**common, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]}
        text = result.answer if raw else model.decode([t for t in result.tokens if t not in model.eos_ids])
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        if raw:  # vLLM's field: the stop string that ended the text (None: end of turn or length)
            choice["stop_reason"] = result.trace.get("stop_reason")
            choice["logprobs"] = result.trace.get("logprobs")
        else:
            choice.update(reasoning_content=result.thinking, content=result.answer)
        return {**common, "object": "text_completion", "choices": [choice]}

    async def _stream(request: Request, job: Job, plan: Plan, rid: str, kind: str,
                      include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
            if kind == "chat":
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                     "logprobs": None}]
            else:
                choices = [] if delta is None else [{"index": 0, "text": delta.get("content", ""),
                                                     "finish_reason": finish, "logprobs": None}]
            payload = {"id": rid, "object": obj, "created": created, "model": model.name, "choices": choices,
                       **extra}
            return f"data: {json.dumps(payload)}\n\n"

        try:
            if kind == "chat":
                yield chunk({"role": "assistant", "content": ""})
            while True:
                item, text = await job.events.get()
                if item == "done":
                    break
                if item == "progress":  # a search method between steps: no text yet, but the client hears it
                    yield chunk(None, reasonbudget={"progress": json.loads(text)})
                elif item == "reasoning":
                    if kind == "chat":
                        yield chunk({"reasoning_content": text, "reasoning": text})
                else:
                    yield chunk({"content": text})
            try:
                result = job.future.result()
            except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                return
            yield chunk({}, _finish(result.finish_reason))
            if include_usage:
                yield chunk(None, usage=_usage(result), reasonbudget=_extra(result, plan))
            yield "data: [DONE]\n\n"
        finally:
            if not job.future.done():  # the client went away mid-stream
                job.cancelled.set()

    async def _respond(request: Request, job: Job, plan: Plan, req: rs.ResponsesRequest):
        ids, created = rs.new_ids(), time.time()
        if req.stream:
            return StreamingResponse(_stream_responses(job, plan, req, ids, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        result = await _wait(request, job)
        if isinstance(result, JSONResponse):
            return result
        return rs.response_object(ids, model.name, req, created=created, result=result, extra=_extra(result, plan))

    async def _stream_responses(job: Job, plan: Plan, req: rs.ResponsesRequest, ids: dict[str, str],
                                created: float) -> AsyncIterator[str]:
        emit = rs.EventWriter()
        state = rs.StreamState(ids, emit)
        try:
            start = rs.response_object(ids, model.name, req, created=created)
            yield emit("response.created", response=start)
            yield emit("response.in_progress", response=start)
            while True:
                item, text = await job.events.get()
                if item == "done":
                    break
                if item == "reasoning":
                    for event in state.reasoning_delta(text):
                        yield event
                elif item != "progress":  # search progress has no Responses event
                    for event in state.answer_delta(text):
                        yield event
            try:
                result = job.future.result()
            except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
                yield emit("error", message=str(e), code=None, param=None)
                failed = {**rs.response_object(ids, model.name, req, created=created), "status": "failed",
                          "error": {"code": "server_error", "message": str(e)}}
                yield emit("response.failed", response=failed)
                return
            for event in state.finish(result):
                yield event
            final = rs.response_object(ids, model.name, req, created=created, result=result, extra=_extra(result, plan),
                                       streamed=state)
            yield emit("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                       response=final)
        finally:
            if not job.future.done():  # the client went away mid-stream
                job.cancelled.set()

    @app.post("/v1/responses")
    async def responses(req: rs.ResponsesRequest, request: Request):
        check_model(req)
        messages = rs.to_messages(req)
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise RequestError("input needs at least one user message with text", "input")
        prompt = build_chat_prompt(model, messages)
        return await run(request, ChatRequest(**rs.as_chat_fields(req)), prompt, raw_text=False, kind="chat",
                         responses_req=req)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        check_model(req)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise RequestError("messages needs at least one user message with text", "messages")
        prompt = build_chat_prompt(model, messages)
        return await run(request, req, prompt, raw_text=False, kind="chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise RequestError(f"prompt: one prompt per request, got {len(prompts)}", "prompt")
        if req.echo:
            raise RequestError("echo is not supported", "echo")
        prompt = model.encode(prompts[0])
        if not prompt:
            raise RequestError("prompt is empty", "prompt")
        return await run(request, req, prompt, raw_text=True, kind="completion")

    @app.exception_handler(_NotFound)
    async def on_not_found(request: Request, exc: _NotFound) -> JSONResponse:
        return error_response(404, str(exc), "model")

    def openapi() -> dict[str, Any]:
        """The generated schema, with `model` narrowed to the one served (clients and fuzzers see it)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            for name in ("ChatRequest", "CompletionRequest", "ResponsesRequest"):
                spec["components"]["schemas"][name]["properties"]["model"]["enum"] = [model.name]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    return app


class _NotFound(Exception):
    pass
