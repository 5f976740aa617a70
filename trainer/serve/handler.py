"""The CPR handler: reads and checks each request, merges concurrent requests into one model call, answers.

CPR's default `PredictionHandler` runs the model inside the event loop, one request at a time. This one keeps the
event loop free: requests are read and checked there, queued, and one model thread takes everything queued (up to
`TRAINER_SERVE_MAX_BATCH` instances) in one call whenever it is free. A lone request waits for nothing; under load,
requests that arrive while the model runs share its next call. Set by the environment (the CPR way; `python -m
trainer.serve` sets it from its flags):

    TRAINER_SERVE_MAX_BATCH      instances per model call across requests [64]; 1 turns merging off (a request
                                 with more instances than this runs alone, in one call)
    TRAINER_SERVE_MAX_INSTANCES  instances per request [256]
    TRAINER_SERVE_MAX_REQUEST_MB request body size [16]
    TRAINER_SERVE_MAX_QUEUED     instances waiting for the model before new requests get a 503 [2048]
    TRAINER_SERVE_TIMEOUT_S      a request's longest wait for the model before a 503 [120]

Reading, parsing and checking a request (base64, and decoding for float-input models) runs in a small thread pool,
not on the event loop, so health checks are answered while the model is busy. A fault of the model (anything but an
input the graph refuses) is a 500 for the requests of that call; the batching task survives it, and if it ever
ends, the next request starts it again.

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
from starlette.requests import ClientDisconnect

from trainer.errors import UsageError
from trainer.util import faultpoints
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
        self.max_queued = max(1, int(_env_number("TRAINER_SERVE_MAX_QUEUED", 2048)))
        self.timeout_s = _env_number("TRAINER_SERVE_TIMEOUT_S", 120)
        self.predictor = predictor()
        self.predictor.max_instances = self.max_instances
        self.ready = False
        self.calls = self.served = 0  # Model calls and the instances they answered (health shows them).
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._request_threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="request")
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._queued = 0  # Instances in the queue.
        threading.Thread(target=self._load, name="load", daemon=True).start()

    def _load(self) -> None:
        try:
            faultpoints.delay("serve_load")  # Tests: a slow load, to see the 503s before ready.
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
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self._request_threads, self.predictor.preprocess, body)
        except BadRequest as e:
            raise _bad(e) from None
        if self._queued + prepared.count > self.max_queued:
            raise HTTPException(503, f"overloaded: {self._queued} instances are waiting for the model; try again")
        future = loop.create_future()
        self._queued += prepared.count
        await self._batches().put((prepared, future))
        try:
            outputs = await asyncio.wait_for(future, self.timeout_s)  # Cancelled on timeout: then skipped.
        except BadRequest as e:
            raise _bad(e) from None
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the model did not answer within {self.timeout_s:g} s") from None
        result = self.predictor.postprocess((outputs, prepared.top_k))
        return Response(json.dumps(result), media_type="application/json")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise _bad(BadRequest(f"the body is {int(declared)} bytes; at most {self.max_bytes}"))
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_bytes:
                    raise _bad(BadRequest(f"the body is over {self.max_bytes} bytes"))
                chunks.append(chunk)
        except ClientDisconnect:  # Nobody to answer: not a server error.
            raise HTTPException(400, "the client disconnected before sending the whole body") from None
        return b"".join(chunks)

    def _batches(self) -> asyncio.Queue:
        if self._queue is None:  # Made on the server's event loop, at its first request.
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():  # Started, or started again should it ever have ended.
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                logging.error("serve: the batching task ended (%r); started again", self._task.exception())
            self._task = asyncio.get_running_loop().create_task(self._serve_batches())
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
            self._queued -= count
            waiting = [(p, f) for p, f in waiting if not f.done()]  # Timed out meanwhile: nobody waits.
            if not waiting:
                continue
            batch = [prepared for prepared, _ in waiting]
            self.calls += 1
            self.served += sum(p.count for p in batch)
            try:
                try:
                    outputs = await loop.run_in_executor(self._model_thread, self._run, merge(batch))
                    results = split(outputs, batch)
                except self._refusal():  # An input the graph refused: each request alone finds whose it is.
                    results = [await loop.run_in_executor(self._model_thread, self._run_alone, p) for p in batch]
            except Exception as e:  # A fault of the model: a 500 for this call's requests; the loop goes on.
                logging.exception("serve: a model call failed")
                results = [e] * len(batch)
            for (_, future), result in zip(waiting, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _refusal(self):
        import tensorflow as tf

        return tf.errors.InvalidArgumentError

    def _run(self, prepared):
        faultpoints.delay("serve_call")  # Tests: a slow model, to see the 503s of a full queue and of a timeout.
        if faultpoints.failing("serve_call"):  # Tests: a model fault, which the batching task must survive.
            raise RuntimeError("a fault injected by TRAINER_FAULT_FAIL=serve_call")
        outputs, _ = self.predictor.predict(prepared)
        return outputs

    def _run_alone(self, prepared):
        """A request's outputs, or the BadRequest naming the instance the graph refused; any other fault is
        returned as it is (a 500)."""
        from trainer.serve.predictor import one

        refused = self._refusal()
        try:
            return self._run(prepared)
        except refused as whole:
            for i in range(prepared.count):
                try:
                    self._run(one(prepared, i))
                except refused as e:
                    return BadRequest(f"instance {i}: {self.predictor.model.why_refused(one(prepared, i).inputs, e)}")
                except Exception as e:
                    return e
            return whole
        except Exception as e:
            return e




def _bad(error: BadRequest) -> HTTPException:
    logging.info("400: %s", error)
    return HTTPException(400, str(error))

