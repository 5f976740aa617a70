"""Vertex AI's CPR model server (FastAPI under uvicorn), with the trainer's handler and predictor.

`create()` is the uvicorn factory. From Vertex AI's custom-container contract it reads AIP_HTTP_PORT,
AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and AIP_STORAGE_URI (the model). On top of CprModelServer it changes two
things. Health answers 503 until the model has loaded and answered a warm-up request. Errors are one JSON object,
{"error": "..."}, not FastAPI's {"detail": ...}.
"""
import os
import warnings

from fastapi.responses import JSONResponse
with warnings.catch_warnings():  # google-cloud-aiplatform's notice about google-cloud-storage 2.x, at import.
    warnings.simplefilter("ignore", FutureWarning)
    from google.cloud.aiplatform.prediction.model_server import CprModelServer
from starlette.exceptions import HTTPException as StarletteHTTPException

HANDLER = ("trainer.serve.handler", "BatchingHandler")
PREDICTOR = ("trainer.serve.predictor", "TrainerPredictor")


class Server(CprModelServer):
    def __init__(self):
        super().__init__()
        self.app.add_exception_handler(StarletteHTTPException, _error)

    def health(self):
        if self.handler.ready:  # A batching task that ended is started again by the next request.
            handler = self.handler
            return JSONResponse({"status": "ready", "model": handler.predictor.model.path,
                                 "model_calls": handler.calls, "instances": handler.served})
        return JSONResponse({"status": "loading"}, status_code=503)


async def _error(request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def create() -> Server:
    for name, value in (("HANDLER_MODULE", HANDLER[0]), ("HANDLER_CLASS", HANDLER[1]),
                        ("PREDICTOR_MODULE", PREDICTOR[0]), ("PREDICTOR_CLASS", PREDICTOR[1]),
                        ("AIP_HEALTH_ROUTE", "/health"), ("AIP_PREDICT_ROUTE", "/predict"), ("AIP_HTTP_PORT", "8080")):
        os.environ.setdefault(name, value)
    return Server()
