"""The CPR handler: reads and checks each request, merges concurrent requests into one model call, answers.

CPR's default `PredictionHandler` runs the model inside the event loop, one request at a time. This one keeps the
event loop free: requests are read and checked there, queued, and one model thread takes everything queued (up to
`TRAINER_SERVE_MAX_BATCH` instances) in one call whenever it is free. A lone request waits for nothing; under load,
requests that arrive while the model runs share its next call. Set by the environment (the CPR way; `python -m
trainer.serve` sets it from its flags):

    TRAINER_SERVE_MAX_BATCH      instances per model call across requests [64]; 1 turns merging off
    TRAINER_SERVE_MAX_INSTANCES  instances per request [256]
    TRAINER_SERVE_MAX_REQUEST_MB request body size [16]

The model loads in a thread when the server starts; until it has answered a warm-up request, health is 503 and
predict 503. A model that cannot be loaded ends the process with one `error:` line and exit status 1.
"""
import asyncio
import concurrent.futures
import json
import logging
import os
import sys
import threading
from typing import Optional, Type

from fastapi import HTTPException, Request, Response
from google.cloud.aiplatform.prediction.handler import Handler

from trainer.errors import UsageError
from trainer.serve.model import BadRequest


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class BatchingHandler(Handler):
    def __init__(self, artifacts_uri: str, predictor: Optional[Type] = None):
        if not artifacts_uri:
            raise ValueError("AIP_STORAGE_URI is not set: the model to serve")
        self.artifacts_uri = artifacts_uri
        self.max_batch = max(1, int(_env_number("TRAINER_SERVE_MAX_BATCH", 64)))
        self.max_instances = max(1, int(_env_number("TRAINER_SERVE_MAX_INSTANCES", 256)))
        self.max_bytes = int(_env_number("TRAINER_SERVE_MAX_REQUEST_MB", 16) * 2**20)
        self.predictor = predictor()
        self.ready = False
        self.calls = self.served = 0  # Model calls and the instances they answered (health shows them).
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._queue: Optional[asyncio.Queue] = None
        threading.Thread(target=self._load, name="load", daemon=True).start()

    def _load(self) -> None:
        try:
            self.predictor.load(self.artifacts_uri)
        except BaseException as e:  # Any failure: one line, and the container exits (Vertex shows the line).
            said = str(e) if isinstance(e, UsageError) else \
                f"cannot serve {self.artifacts_uri}: {type(e).__name__}: {e}"
            sys.stderr.write(f"error: {said.strip().splitlines()[0][:500] if said.strip() else type(e).__name__}\n")
            sys.stderr.flush()
            os._exit(1)
        model = self.predictor.model
        self.ready = True
        sys.stderr.write(f"serve: ready: {model.path} ({model.num_classes} classes: "
                         f"{', '.join(model.class_names[:10])}{', ...' if model.num_classes > 10 else ''}; inputs "
                         f"{', '.join(model.specs)}); up to {self.max_batch} instances per model call\n")
        sys.stderr.flush()

    async def handle(self, request: Request) -> Response:
        if not self.ready:
            raise HTTPException(503, "the model is still loading")
        body = await self._body(request)
        try:
            prepared = self.predictor.preprocess(_json(body))
            if prepared.count > self.max_instances:
                raise BadRequest(f"{prepared.count} instances in one request; at most {self.max_instances}")
        except BadRequest as e:
            raise _bad(e) from None
        future = asyncio.get_running_loop().create_future()
        await self._batches().put((prepared, future))
        try:
            outputs = await future
        except BadRequest as e:
            raise _bad(e) from None
        result = self.predictor.postprocess((outputs, prepared.top_k))
        return Response(json.dumps(result), media_type="application/json")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise _bad(BadRequest(f"the body is {int(declared)} bytes; at most {self.max_bytes}"))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise _bad(BadRequest(f"the body is over {self.max_bytes} bytes"))
            chunks.append(chunk)
        return b"".join(chunks)

    def _batches(self) -> asyncio.Queue:
        if self._queue is None:  # Made on the server's event loop, at its first request.
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._serve_batches())
        return self._queue

    async def _serve_batches(self) -> None:
        from trainer.serve.predictor import merge, split

        loop = asyncio.get_running_loop()
        carry = None  # A request taken from the queue that did not fit the last call: first in the next.
        while True:
            waiting = [carry or await self._queue.get()]
            carry, count = None, waiting[0][0].count
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if count + item[0].count > self.max_batch:
                    carry = item
                    break
                waiting.append(item)
                count += item[0].count
            batch = [prepared for prepared, _ in waiting]
            self.calls += 1
            self.served += count
            try:
                outputs = await loop.run_in_executor(self._model_thread, self._run, merge(batch))
                results = split(outputs, batch)
            except Exception:  # One request's instance the graph refused: each request alone finds it.
                results = [await loop.run_in_executor(self._model_thread, self._run_alone, p) for p in batch]
            for (_, future), result in zip(waiting, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _run(self, prepared):
        outputs, _ = self.predictor.predict(prepared)
        return outputs

    def _run_alone(self, prepared):
        """A request's outputs, or the BadRequest naming the instance the model refused (or the error itself)."""
        from trainer.serve.predictor import one

        try:
            return self._run(prepared)
        except Exception as whole:
            for i in range(prepared.count):
                try:
                    self._run(one(prepared, i))
                except Exception as e:
                    return BadRequest(f"instance {i}: {self.predictor.model.why_refused(one(prepared, i).inputs, e)}")
            return whole


def _json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON ({e})") from None


def _bad(error: BadRequest) -> HTTPException:
    logging.info("400: %s", error)
    return HTTPException(400, str(error))

