"""The serving container's server (`python -m trainer.serve`), started as a real subprocess on 127.0.0.1 and spoken
to over HTTP: both engines' exports (the Estimator's written by TensorFlow 2.15), both input kinds, predictions equal
to `trainer.predict`'s, the bad requests, health before and after load, a model on the loopback Cloud Storage server
through the container's own environment, and the Model Registry's request for the container.

On TensorFlow 2.21 (the serving runtime; `make test-tf221`). The Estimator export needs TRAINER_TF215_PYTHON (set by
`make test`); without it that case is skipped."""
import base64
import concurrent.futures
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, make_image_folder

ON_TF215 = tuple(int(p) for p in tf.__version__.split(".")[:2]) <= (2, 15)
pytestmark = [pytest.mark.tf221, pytest.mark.skipif(
    ON_TF215, reason="the serving container runs TensorFlow 2.21 (.venv-keras, `make test-tf221`)")]
TF215 = os.environ.get("TRAINER_TF215_PYTHON") or None
CLASSES = ("cats", "dogs", "owls")
TINY = ["--backbone=small_cnn", "--image_size=16", "--eval_throttle_secs=0", "--train_steps=30", "--batch_size=8"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_") and k != "TF_USE_LEGACY_KERAS"}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)} | extra


def _train(python, folder: Path, *args):
    proc = subprocess.run([python, "-m", "trainer.task", *TINY, *args], cwd=folder, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exports: a Keras engine image model (image bytes in; promoted into a champion folder), a Keras engine
    float-input model (digits arrays), and the Estimator engine's image model (TensorFlow 2.15) where it can run."""
    root = tmp_path_factory.mktemp("serve")
    make_image_folder(root / "images", classes=CLASSES, per_class=8)
    found = {"root": root, "images": root / "images"}
    found["keras"] = root / _train(sys.executable, root, "--engine=keras", "--data=images", "--model_dir=keras run",
                                   "--champion_dir=champions")["export"]
    found["floats"] = root / _train(sys.executable, root, "--engine=keras", "--data=digits",
                                    "--model_dir=floats")["export"]
    if TF215:
        found["estimator"] = root / _train(TF215, root, "--engine=estimator", "--data=images",
                                           "--model_dir=estimator")["export"]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m trainer.serve ARGS` (or `command`) on a free loopback port; its console in `log`."""

    def __init__(self, *args, cwd=REPO, env=None, command=None, health="/health", predict="/predict"):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_route, self.predict_route = health, predict
        self.log = Path(tempfile.mkdtemp(prefix="serve-")) / "serve.log"
        command = command or [sys.executable, "-m", "trainer.serve", *args, f"--port={self.port}"]
        self.proc = subprocess.Popen(command, cwd=cwd, env=env or _env(), stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        self.seen = []  # Health answers until ready: None for a refused connection.

    def wait_ready(self, timeout=180) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            status, body = self.get(self.health_route)
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)
            if status == 200:
                return self
            if status == 503:
                assert body == {"status": "loading"}
                if self.seen.count(503) == 1 and not hasattr(self, "early"):  # Predict while loading: 503 too.
                    self.early = self.post({"instances": [{"b64": "iVBORw0KGgo="}]})
                    assert self.early == (503, {"error": "the model is still loading"}) or self.early[0] == 400
            time.sleep(0.05)
        raise AssertionError(f"not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def get(self, route):
        try:
            with urllib.request.urlopen(self.url + route, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)
        except (ConnectionError, urllib.error.URLError):
            return None, None

    def post(self, body, raw: bytes = None, headers=None):
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + self.predict_route, data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def serve():
    started = []

    def start(*args, **kwargs) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def b64(path) -> dict:
    return {"b64": base64.b64encode(Path(path).read_bytes()).decode()}


def image_files(models):
    return sorted(p for p in models["images"].rglob("*") if p.is_file())


def trainer_predict(model, data, tmp_path) -> dict:
    """trainer.predict's rows by path: {path: {class: probability}} (top_k = every class)."""
    out = tmp_path / f"predict-{Path(model).name}.jsonl"
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={model}", f"--data={data}",
                           f"--output={out}", "--top_k=10"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {row["path"]: dict(row["top_k"]) for row in rows}


# ---- Predictions -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["keras", "floats", "estimator"])
def test_predictions_equal_trainer_predict_on_the_same_files(models, serve, tmp_path, kind):
    """Image bytes for an image model; for the float-input model both forms: the files as b64 (decoded as
    trainer.predict decodes them) and their pixels as nested lists."""
    if kind not in models:
        pytest.skip("the Estimator export needs TensorFlow 2.15 (TRAINER_TF215_PYTHON, set by `make test`)")
    server = serve(f"--export={models[kind]}").wait_ready()
    assert server.seen[0] in (None, 503) and server.seen[-1] == 200, server.seen
    expected = trainer_predict(models[kind], models["images"], tmp_path)
    files = image_files(models)
    status, body = server.post({"instances": [b64(f) for f in files], "parameters": {"top_k": 2}})
    assert status == 200, body
    forms = [body["predictions"]]
    if kind == "floats":
        from trainer.data.inputs import decode_image

        pixels = [decode_image(f.read_bytes(), 16).numpy().tolist() for f in files]
        status, body = server.post({"instances": pixels})
        assert status == 200, body
        forms.append(body["predictions"])
    for predictions in forms:
        assert len(predictions) == len(files)
        for path, prediction in zip(files, predictions):
            want = expected[str(path)]
            names = list(CLASSES) if kind != "floats" else [str(i) for i in range(10)]
            assert len(prediction["probabilities"]) == len(names) == len(want)
            for name, probability in want.items():
                assert abs(prediction["probabilities"][names.index(name)] - probability) < 1e-5, (path, name)
            assert prediction["classes"] == max(want, key=want.get)
    top = forms[0][0]["top_k"]
    assert len(top) == 2 and top[0][0] == forms[0][0]["classes"] and top[0][1] >= top[1][1]
    assert server.stop() == -signal.SIGTERM  # uvicorn shuts down, then re-raises the signal it caught.


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(models, serve):
    files = image_files(models)
    merged = serve(f"--export={models['keras']}").wait_ready()
    alone = serve(f"--export={models['keras']}", "--max_batch=1").wait_ready()
    answers = {}
    for name, server in (("merged", merged), ("alone", alone)):
        _, before = server.get("/health")
        barrier = threading.Barrier(len(files))

        def call(path, server=server, barrier=barrier):
            barrier.wait()
            return server.post({"instances": [b64(path)], "parameters": {"top_k": 1}})

        with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
            results = list(pool.map(call, files))
        assert all(status == 200 for status, _ in results), results
        answers[name] = [body["predictions"][0] for _, body in results]
        _, after = server.get("/health")
        calls, instances = after["model_calls"] - before["model_calls"], after["instances"] - before["instances"]
        assert instances == len(files), (name, before, after)
        answers[name + " calls"] = calls
    assert answers["alone calls"] == len(files)
    assert answers["merged calls"] < len(files), answers["merged calls"]
    for one, other in zip(answers["merged"], answers["alone"]):
        assert one["classes"] == other["classes"]
        assert np.allclose(one["probabilities"], other["probabilities"], atol=1e-5)


def test_a_refused_image_fails_only_its_own_request_among_merged_ones(models, serve):
    """Requests of 3 instances under --max_batch=4 (one carried over to the next call each time), sent together,
    one of them with an image that does not decode: that one is a 400 naming its instance, every other request gets
    the answers it gets alone."""
    files = image_files(models)
    server = serve(f"--export={models['keras']}", "--max_batch=4").wait_ready()
    groups = [files[i:i + 3] for i in range(0, 21, 3)]
    expected = [server.post({"instances": [b64(f) for f in group]})[1]["predictions"] for group in groups]
    broken = {"b64": base64.b64encode(files[1].read_bytes()[:300] if files[1].suffix == ".jpg" else
                                      files[1].read_bytes()[:60]).decode()}
    bodies = [{"instances": [b64(f) for f in group]} for group in groups]
    bodies[3]["instances"][2] = broken
    barrier = threading.Barrier(len(bodies))

    def call(body):
        barrier.wait()
        return server.post(body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(call, bodies))
    for i, (status, body) in enumerate(results):
        if i == 3:
            assert status == 400 and body["error"].startswith("instance 2: the image does not decode"), body
            continue
        assert status == 200, body
        for got, want in zip(body["predictions"], expected[i]):
            assert got["classes"] == want["classes"]
            assert np.allclose(got["probabilities"], want["probabilities"], atol=1e-5)


# ---- Bad requests ------------------------------------------------------------------------------------------

def _bad_requests(files):
    good = b64(files[0])
    truncated = {"b64": base64.b64encode(files[1].read_bytes()[:300]).decode()} if files[1].suffix == ".jpg" else \
        {"b64": base64.b64encode(files[1].read_bytes()[:60]).decode()}
    return [
        ("not base64", {"instances": [good, {"b64": "!!not base64"}]}, 'instance 1: "b64" is not base64'),
        ("not an image", {"instances": [{"b64": base64.b64encode(b"hello world").decode()}]},
         "instance 0: the b64 bytes are not a JPEG, PNG, GIF or BMP image"),
        ("a broken image", {"instances": [good, truncated]}, "instance 1: the image does not decode"),
        ("floats for an image model", {"instances": [[[0.0] * 3] * 16]}, "this model takes encoded images"),
        ("an object of other keys", {"instances": [{"bytes": "x"}]}, 'an object must be {"b64": "..."}'),
        ("too many instances", {"instances": [good] * 5}, "5 instances in one request; at most 4"),
        ("a body over the limit", {"instances": [{"b64": "A" * 200_000}]}, "bytes; at most"),
        ("not JSON", b"instances=1", "the body is not JSON"),
        ("no instances", {"inputs": [good]}, '{"instances": [...], "parameters": {...}}'),
        ("empty instances", {"instances": []}, "`instances` must be a non-empty list"),
        ("an unknown parameter", {"instances": [good], "parameters": {"topk": 2}}, "unknown parameter 'topk'"),
        ("top_k out of range", {"instances": [good], "parameters": {"top_k": 9}}, "parameters.top_k=9"),
    ]


def test_bad_requests_are_400_with_one_json_error_and_the_server_goes_on(models, serve):
    files = image_files(models)
    server = serve(f"--export={models['keras']}", "--max_instances=4", "--max_request_mb=0.1").wait_ready()
    for what, body, fragment in _bad_requests(files):
        status, answer = server.post(None, raw=body) if isinstance(body, bytes) else server.post(body)
        assert status == 400 and list(answer) == ["error"] and fragment in answer["error"], (what, status, answer)
        assert "Traceback" not in answer["error"] and "\n" not in answer["error"], what
        status, answer = server.post({"instances": [b64(files[0])]})
        assert status == 200 and answer["predictions"][0]["classes"] == "cats", (what, answer)
    # A float-input model: a wrong shape, non-numbers, NaN.
    floats = serve(f"--export={models['floats']}").wait_ready()
    for instance, fragment in (([[0.0] * 3] * 16, "takes shape [N, 16, 16, 3]; got [16, 3]"),
                               ("pixels", "takes numbers of shape [N, 16, 16, 3]; got a string"),
                               ([[[float("nan")] * 3] * 16] * 16, "NaN or infinite")):
        status, answer = floats.post(None, raw=json.dumps({"instances": [instance]}).encode())
        assert status == 400 and fragment in answer["error"], (instance if isinstance(instance, str) else "", answer)
    assert server.proc.poll() is None and floats.proc.poll() is None


@pytest.mark.slow  # Two servers with a slowed model (about 30 s): `make test-slow`.
def test_a_model_fault_a_full_queue_and_a_timeout_are_json_errors_and_the_server_goes_on(models, serve):
    """The batching task's fault paths, with a model made slow (1 s a call) and failing once: the failed call's
    request is a 500 and the next is answered; requests over TRAINER_SERVE_MAX_QUEUED waiting instances are 503s
    while the accepted ones are answered; a request waiting past TRAINER_SERVE_TIMEOUT_S is a 503 while health
    still answers. Every error is one JSON object."""
    files = image_files(models)
    one = {"instances": [b64(files[0])]}
    server = serve(f"--export={models['keras']}", "--max_batch=1", env=_env(
        TRAINER_FAULT_FAIL="serve_call:1", TRAINER_FAULT_DELAY="serve_call:1", TRAINER_SERVE_MAX_QUEUED="2")
    ).wait_ready()
    status, answer = server.post(one)
    assert status == 500 and list(answer) == ["error"] and "TRAINER_FAULT_FAIL=serve_call" in answer["error"], answer
    status, answer = server.post(one)
    assert status == 200 and answer["predictions"][0]["classes"] == "cats", answer
    barrier = threading.Barrier(6)

    def call(path):
        barrier.wait()
        return server.post({"instances": [b64(path)]}), path

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, files[:6]))
    refused = [answer for (status, answer), _ in results if status == 503]
    answered = [(answer, path) for (status, answer), path in results if status == 200]
    # At most 3 in the server at once (one in the model, 2 queued): at least 3 of the 6 are refused.
    assert len(refused) >= 3 and len(refused) + len(answered) == 6, results
    assert all(list(r) == ["error"] and r["error"].startswith("overloaded: ") for r in refused), refused
    for answer, path in answered:  # Answered as when alone.
        assert answer == server.post({"instances": [b64(path)]})[1], path
    assert server.post(one)[0] == 200 and server.get("/health")[0] == 200
    assert server.proc.poll() is None

    slow = serve(f"--export={models['keras']}", env=_env(
        TRAINER_FAULT_DELAY="serve_call:4", TRAINER_SERVE_TIMEOUT_S="1")).wait_ready()
    started = time.time()
    status, answer = slow.post(one)
    assert status == 503 and answer == {"error": "the model did not answer within 1 s"}, answer
    assert time.time() - started < 3.5
    status, health = slow.get("/health")  # The model is still busy with that call.
    assert status == 200 and health["status"] == "ready"
    assert slow.post(one)[0] == 503 and slow.proc.poll() is None


# ---- The container: Cloud Storage, Vertex AI's environment, the Dockerfile's entry point ------------------------

def _dockerfile_serve_stage():
    """The `serve` stage's ENV and ENTRYPOINT, as the container would run them."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split(" AS serve\n", 1)[1].split("\nFROM ", 1)[0]
    env = {}
    for line in re.findall(r"^ENV (.*)$", stage, re.M):
        env.update(item.split("=", 1) for item in shlex.split(line))
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.M).group(1))
    return env, entry


def test_the_container_serves_a_model_from_cloud_storage_on_vertex_routes(models, serve, gcs_server, tmp_path):
    """The Dockerfile's serve ENTRYPOINT with its ENV, as Vertex AI starts it: the model from AIP_STORAGE_URI on the
    loopback Cloud Storage server, the port and routes from AIP_*; health 503 (or not listening) before the load."""
    _, client = gcs_server
    bucket = client.bucket("test-bucket")
    for path in models["keras"].rglob("*"):
        if path.is_file():
            bucket.blob(f"models/pets/1/{path.relative_to(models['keras'])}").upload_from_filename(str(path))
    env, entry = _dockerfile_serve_stage()
    assert entry[:3] == ["python", "-m", "trainer.serve"] and "--host=0.0.0.0" in entry
    port = _free_port()
    env = _env(**env) | {"AIP_STORAGE_URI": "gs://test-bucket/models/pets/1", "AIP_HTTP_PORT": str(port),
                         "AIP_HEALTH_ROUTE": "/v1/health", "AIP_PREDICT_ROUTE": "/v1/models/pets:predict",
                         "TRAINER_CACHE_DIR": str(tmp_path / "cache"), "TRAINER_FAULT_DELAY": "serve_load:4",
                         "TRAINER_SERVE_MAX_INSTANCES": "2"}
    server = serve(command=[sys.executable, *entry[1:]], env=env, cwd=tmp_path, health="/v1/health",
                   predict="/v1/models/pets:predict")
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    server.wait_ready()
    assert 503 in server.seen, server.seen  # Loading takes 4 s more here (TRAINER_FAULT_DELAY): health said so.
    assert server.early == (503, {"error": "the model is still loading"})  # And predict too.
    files = image_files(models)
    status, body = server.post({"instances": [{"image_bytes": b64(files[0])}]})
    assert status == 200 and body["predictions"][0]["classes"] == "cats", body
    assert server.get("/health")[0] == 404 and server.get("/v1/health")[1]["model"].startswith(str(tmp_path / "cache"))
    # The container's settings come from its environment (here TRAINER_SERVE_MAX_INSTANCES=2).
    status, body = server.post({"instances": [{"b64": b64(files[0])["b64"]}] * 3})
    assert status == 400 and body["error"] == "3 instances in one request; at most 2", body


def test_the_champion_is_served_and_mistakes_are_one_error_line(models, serve, tmp_path):
    root = models["root"]
    server = serve("--export=champion", "--champion_dir=champions", cwd=root).wait_ready()
    assert "/champions/" in server.get("/health")[1]["model"]
    status, body = server.post({"instances": [b64(image_files(models)[0])]})
    assert status == 200 and body["predictions"][0]["classes"] == "cats"
    (tmp_path / "empty").mkdir()
    busy = socket.socket()  # A port another server holds: refused before the model loads.
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for args, fragment in ((["--export=champion"], "--export=champion needs --champion_dir"),
                           ([], "nothing to serve"),
                           (["--export=no/such/run"], "--export=no/such/run does not exist"),
                           ([f"--export={tmp_path}", "--champion_dir=x"], "not both"),
                           ([f"--export={tmp_path}", "--port=70000"], "--port=70000 must be from 1 to 65535"),
                           ([f"--export={tmp_path}", "--max_batch=0"], "--max_batch=0 must be positive"),
                           ([f"--export={tmp_path / 'empty'}"], "holds no SavedModel"),
                           ([f"--export={models['keras']}", f"--port={busy.getsockname()[1]}"],
                            "cannot listen there")):
        proc = subprocess.run([sys.executable, "-m", "trainer.serve", f"--port={_free_port()}", *args], cwd=tmp_path,
                              env=_env(), capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and fragment in errors[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, args


# ---- The Model Registry --------------------------------------------------------------------------------------

def _register(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "register_model.py"), "--project=proj",
                           "--region=us-central1", "--display_name=pets", "--dry_run", *args], env=_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # Six register_model.py processes (25 s): `make test-slow`.
def test_registering_names_the_serving_container_and_refuses_the_prebuilt_one_for_tf221(models):
    from google.cloud import aiplatform_v1

    refused = _register(f"--artifact_uri={models['keras']}")
    assert refused.returncode == 1 and "was written by TensorFlow 2.21" in refused.stderr and \
        "--serving_image" in refused.stderr, refused.stderr
    image = "us-central1-docker.pkg.dev/proj/trainer/serve:1"
    proc = _register(f"--artifact_uri={models['keras']}", f"--serving_image={image}")
    assert proc.returncode == 0, proc.stderr
    spec = aiplatform_v1.Model.from_json(proc.stdout).container_spec
    assert spec.image_uri == image and spec.predict_route == "/predict" and spec.health_route == "/health"
    assert [p.container_port for p in spec.ports] == [8080]
    # The former name, with another of Vertex AI's prebuilt images: no routes of ours, the TF check kept.
    prebuilt = "us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"
    refused = _register(f"--artifact_uri={models['keras']}", f"--serving_image_uri={prebuilt}")
    assert refused.returncode == 1 and "was written by TensorFlow 2.21" in refused.stderr, refused.stderr
    if "estimator" in models:
        proc = _register(f"--artifact_uri={models['estimator']}", f"--serving_image_uri={prebuilt}")
        spec = aiplatform_v1.Model.from_json(proc.stdout).container_spec
        assert proc.returncode == 0 and spec.image_uri == prebuilt and not spec.predict_route and not spec.ports
    env, entry = _dockerfile_serve_stage()  # The image's own defaults agree with what the registry declares.
    assert (env["AIP_PREDICT_ROUTE"], env["AIP_HEALTH_ROUTE"], env["AIP_HTTP_PORT"]) == ("/predict", "/health", "8080")
    if "estimator" in models:  # A TF 2.15 SavedModel may still go to the prebuilt image, with the date said.
        proc = _register(f"--artifact_uri={models['estimator']}")
        assert proc.returncode == 0 and "retires on 2027-01-14" in proc.stderr, proc.stderr
