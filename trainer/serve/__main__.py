"""Serve a trained model over HTTP, as the Vertex AI serving container does.

    python -m trainer.serve --export=PATH|gs://...|champion [--champion_dir=DIR] [--port=8080] [--host=127.0.0.1]

--export: an export version folder, an export kind folder (its newest version), a model_dir (its served export), a
champion folder, local or gs://; `champion` (or no --export) with --champion_dir serves that folder's champion. In
the container, without flags, the model is $AIP_STORAGE_URI and the port $AIP_HTTP_PORT, as Vertex AI sets them.

    curl -s localhost:8080/health
    curl -s localhost:8080/predict -d '{"instances": [{"b64": "'$(base64 -w0 cat.jpg)'"}], "parameters": {"top_k": 3}}'

Answers {"predictions": [{"classes", "probabilities", "top_k"}, ...]}; a bad request is a 400 with {"error": "..."}.
The server is Vertex AI's Custom Prediction Routines model server (FastAPI under uvicorn), one process: the model's
own threads use every core, and concurrent requests share model calls (--max_batch).
"""
import os
import sys

from trainer.errors import ArgumentParser, UsageError


def parse(argv):
    parser = ArgumentParser(prog="python -m trainer.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default=None,
                        help="export folder, model_dir, champion folder (local or gs://), or `champion` "
                             "[$AIP_STORAGE_URI]")
    parser.add_argument("--champion_dir", default=None, help="serve this folder's champion (with --export=champion)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the container uses 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="[$AIP_HTTP_PORT, else 8080]")
    parser.add_argument("--max_batch", type=int, default=None, help="instances per model call, across concurrent "
                        "requests; 1 turns merging off [$TRAINER_SERVE_MAX_BATCH, else 64]")
    parser.add_argument("--max_instances", type=int, default=None,
                        help="instances per request [$TRAINER_SERVE_MAX_INSTANCES, else 256]")
    parser.add_argument("--max_request_mb", type=float, default=None,
                        help="request body size [$TRAINER_SERVE_MAX_REQUEST_MB, else 16]")
    return parser.parse_args(argv)


def model_uri(args) -> str:
    """What to serve, from --export, --champion_dir and $AIP_STORAGE_URI; checked as far as it can be without
    loading anything."""
    from trainer.cloud import gcs

    export = args.export
    if export == "champion" or (export is None and args.champion_dir):
        if not args.champion_dir:
            raise UsageError("--export=champion needs --champion_dir: the folder whose CHAMPION.json names the model")
        uri = args.champion_dir
    elif export and args.champion_dir:
        raise UsageError(f"give --export={export} or --champion_dir, not both (or --export=champion)")
    else:
        uri = export or os.environ.get("AIP_STORAGE_URI")
    if not uri:
        raise UsageError("nothing to serve: give --export=PATH (or --champion_dir=DIR); in the container, "
                         "Vertex AI sets $AIP_STORAGE_URI")
    if gcs.is_gcs(uri):
        return uri
    if not os.path.exists(uri):
        raise UsageError(f"--export={uri} does not exist" if uri != args.champion_dir else
                         f"--champion_dir={uri} does not exist")
    return os.path.abspath(uri)


def _check_port(host: str, port: int) -> None:
    """Before the model loads: the address must be free (uvicorn says so only after, in its own words)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise UsageError(f"--host={host} --port={port}: cannot listen there ({e.strerror}); another server may "
                         "be using it: pick another --port") from None


def main(argv=None) -> int:
    args = parse(argv)
    try:
        uri = model_uri(args)
        port = args.port if args.port is not None else int(os.environ.get("AIP_HTTP_PORT") or 8080)
        if not 0 < port < 65536:
            raise UsageError(f"--port={port} must be from 1 to 65535")
        _check_port(args.host, port)
        limits = {}
        for flag, default in (("max_batch", 64), ("max_instances", 256), ("max_request_mb", 16)):
            variable = f"TRAINER_SERVE_{flag.upper()}"
            value = getattr(args, flag)
            try:
                value = value if value is not None else float(os.environ.get(variable) or default)
            except ValueError:
                raise UsageError(f"${variable}={os.environ[variable]} must be a number") from None
            if value <= 0:
                raise UsageError(f"--{flag}={value:g} must be positive")
            limits[variable] = f"{value:g}"
        try:
            import importlib

            import uvicorn
            importlib.import_module("trainer.serve.server")  # FastAPI and CPR's server, before anything starts.
        except ImportError as e:
            raise UsageError(f"serving needs the serve extra ({e.name} is missing): pip install 'trainer[serve]'")
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    os.environ.update({"AIP_STORAGE_URI": uri, "AIP_HTTP_PORT": str(port), **limits})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.write(f"serve: loading {uri}; http://{args.host}:{port}{os.environ.get('AIP_PREDICT_ROUTE', '/predict')}"
                     f" (health: {os.environ.get('AIP_HEALTH_ROUTE', '/health')})\n")
    # One worker: each would hold its own copy of the model, and TensorFlow already runs one call on every core.
    uvicorn.run("trainer.serve.server:create", factory=True, host=args.host, port=port, workers=1,
                access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
