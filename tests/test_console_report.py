"""What a run shows: a quiet console, the full train.log, report.html, pictures in TensorBoard.

Real subprocesses (the console is process behaviour: file descriptor 2, exit codes), with
TensorFlow's own environment defaults: no TF_CPP_MIN_LOG_LEVEL, no PYTHONWARNINGS.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO, last_json, last_run_log

CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", re.M)


def tf_default_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def trainer(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=tf_default_env(),
                          capture_output=True, text=True, timeout=timeout)


def report_data(path) -> dict:
    page = path.read_text()
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(blob.replace("<\\/", "</"))


def assert_self_contained(page: str):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "nothing fetched from the network"
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script src" not in page


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The acceptance run: default digits, 300 steps, three evaluations."""
    model_dir = tmp_path_factory.mktemp("console") / "run"
    proc = trainer("--data=digits", "--backbone=small_cnn", "--train_steps=300", "--save_checkpoints_steps=100",
                   "--eval_throttle_secs=0", f"--model_dir={model_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def test_default_console_is_short_and_train_log_has_everything(digits_run):
    model_dir, proc = digits_run
    lines = proc.stderr.splitlines()
    assert len(lines) <= 40, proc.stderr
    assert not [line for line in lines if re.search(r"deprecat|Instructions for updating", line, re.I)], proc.stderr
    for start in ("data: digits: 10 classes", "model: small_cnn, 20,330 params", "strategy: one_device, 1 replica",
                  f"model_dir: {model_dir}", "done in "):
        assert any(line.startswith(start) for line in lines), (start, proc.stderr)
    evaluations = [line for line in lines if line.startswith("eval @ step")]
    assert [int(re.search(r"step (\d+)", e).group(1)) for e in evaluations] == [100, 200, 300], proc.stderr
    assert all("best " in e and ("exported export/best/" in e or "not exported" in e) for e in evaluations)
    assert re.search(r"step 300/300 \(100%\), [\d.]+ steps/s, \d+ examples/s, lr 0.001, loss [\d.]+, ETA",
                     proc.stderr)
    assert last_json(proc.stdout)["global_step"] == 300  # The JSON summary is still the last stdout line.
    log = (model_dir / "train.log").read_text()
    assert log.count("\n===== run started ") == 1
    assert "Instructions for updating" in log and "Saving dict for global step 300" in log  # TF's Python log.
    assert CPP_LINE.search(log), "TensorFlow's C++ log is captured too"
    assert all(line in log for line in evaluations)


def test_report_html_of_a_finished_run(digits_run):
    model_dir, proc = digits_run
    page = (model_dir / "report.html").read_text()
    assert f"report:      {model_dir / 'report.html'}" in proc.stderr
    assert_self_contained(page)
    data = report_data(model_dir / "report.html")
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert data["eval_metrics"] == metrics
    assert data["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6), "recomputed on the same split"
    assert data["examples"] == 385 and sum(map(sum, data["confusion_matrix"])) == 385
    assert f"<td class=\"n\">{metrics['accuracy']:.4f}</td>" in page
    assert data["class_names"] == [str(i) for i in range(10)]
    assert all(f"<td>{i}</td>" in page for i in range(10)), "class names in the tables"
    assert page.count("<svg") >= 5  # loss, learning rate, accuracy and eval-loss curves, the confusion heatmap.
    assert 'aria-label="learning rate"' in page
    assert "best 0.98" in page or "best 0.99" in page  # The best checkpoint is marked on the accuracy curve.
    wrong = 385 - sum(data["confusion_matrix"][i][i] for i in range(10))
    assert page.count('src="data:image/png;base64,') == min(wrong, 16)  # Worst-misclassified thumbnails.
    assert "--backbone</td><td>small_cnn" in page  # Flags that differ from the defaults.
    # Its figures are the served (calibrated) model's, from the calibration's own pass over the split (no pass of
    # its own; with --calibrate=none, the evaluation's kept per example: test_binary_report_comes_from_the_evaluation),
    # and the same as a report computed afresh by running keras_model.h5 over the split.
    assert "report.html: predictions of the served model's own pass (calibrated, or the head on the cached " \
        "features) (385 examples)" in (model_dir / "train.log").read_text()
    assert "From the predictions of the model on the 385 evaluation examples" in page
    assert "<h2>Calibration</h2>" in page and "Reliability diagram" in page
    assert_same_as_a_fresh_report(model_dir)


def assert_same_as_a_fresh_report(model_dir, with_images=True):
    """The report written at the end of the run equals one `python -m trainer.report` computes afresh (in this
    process: its CLI is run by test_killed_run_gets_a_report...) by running keras_model.h5 over the split."""
    from trainer.outputs import report

    fresh = model_dir.parent / f"{model_dir.name}-fresh.html"
    report.build(str(model_dir), output=str(fresh))
    at_end, again = report_data(model_dir / "report.html"), report_data(fresh)
    assert at_end["confusion_matrix"] == again["confusion_matrix"] and at_end["examples"] == again["examples"]

    def thumbnails(page):  # {example: (caption, confidence)} of the worst-misclassified images.
        found = re.findall(r'alt="validation example (\d+)".*?<figcaption>(.*?)\(([\d.]+)\)<br>', page)
        return {int(i): (caption, float(p)) for i, caption, p in found}

    shown, expected = thumbnails((model_dir / "report.html").read_text()), thumbnails(fresh.read_text())
    assert shown.keys() == expected.keys() and (shown or not with_images)
    for i, (caption, p) in shown.items():  # Float32 results of two graphs: equal to the printed digits, or next.
        assert caption == expected[i][0] and abs(p - expected[i][1]) <= 0.011, (i, shown[i], expected[i])


def test_binary_report_comes_from_the_evaluation(capsys, tmp_path):
    from test_bad_inputs import cli

    model_dir = tmp_path / "run"
    # --calibrate=none: the served model's probabilities are the evaluation's, kept per example (no second pass).
    status, errors = cli(capsys, "--data=digits", "--classes=3,8", "--label_mode=binary", "--backbone=mlp",
                         "--train_steps=5", "--learning_rate=0.0001", "--calibrate=none", f"--model_dir={model_dir}")
    assert status == 0 and not errors  # Seen: accuracy 0.62, 16 images shown.
    assert "From the predictions of the served model's evaluation" in (model_dir / "report.html").read_text()
    assert sum(map(sum, report_data(model_dir / "report.html")["confusion_matrix"])) > 50
    assert 'alt="validation example' in (model_dir / "report.html").read_text()  # A binary confidence shown.
    assert_same_as_a_fresh_report(model_dir)


def test_tensorboard_gets_confusion_images_and_hparams(digits_run):
    model_dir, _ = digits_run
    images = []
    for path in tf.io.gfile.glob(str(model_dir / "eval" / "*.confusion")):
        for event in tf.compat.v1.train.summary_iterator(path):
            images += [event.step for v in event.summary.value if v.tag == "confusion_matrix"]
    assert sorted(images) == [100, 200, 300]
    plugins = set()
    for path in tf.io.gfile.glob(str(model_dir / "hparams" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
            if any(v.tag == "final_accuracy" for v in event.summary.value):
                assert event.step == 300
    assert "hparams" in plugins
    from trainer.util import events

    assert events.read_scalars(str(model_dir))["learning_rate"][-1][1] == pytest.approx(0.001)


@pytest.mark.slow  # A kill and a resume (16 s): make test's 20 minutes.
def test_killed_run_gets_a_report_then_resumes_into_the_same_log(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--data=digits", "--backbone=mlp", "--train_steps=300", "--save_checkpoints_steps=100",
            "--eval_throttle_secs=0", f"--model_dir={model_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=tf_default_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # The default console says when the first evaluation is done.
        if line.startswith("eval @ step 100"):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL
    out = tmp_path / "killed.html"
    report = subprocess.run([sys.executable, "-m", "trainer.report", str(model_dir), f"--output={out}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout.strip() == str(out)
    page = out.read_text()
    assert "running or stopped" in page and "Confusion matrix" in page and "Not available" not in page
    # Trial c077: the step of the summaries alone ("last logged step 61") lagged the checkpoint.
    assert re.search(r"latest checkpoint at step (100|200)\b", page), page[:3000]
    assert_self_contained(page)
    assert report_data(out)["examples"] == 385  # Predicted by the model rebuilt from the latest checkpoint.

    again = trainer(*args, "--verbose")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restoring parameters from" in again.stderr and "Instructions for updating" in again.stderr  # --verbose
    log = (model_dir / "train.log").read_text()
    assert log.count("\n===== run started ") == 2 and "eval @ step 100" in log.split("\n===== run started ")[1]
    assert "eval @ step 300" in last_run_log(model_dir)
    served = report_data(model_dir / "report.html")["eval_metrics"]
    assert served.get("last_evaluation", served)["global_step"] == 300
    served_step = served["global_step"]  # The best model's: the status says both when they differ.
    assert "finished</span> at step 300" + ("" if served_step == 300 else f" (serving the model of step "
                                           f"{served_step})") in (model_dir / "report.html").read_text()


def test_an_error_is_one_line_on_the_console_and_recorded_in_train_log(tmp_path):
    proc = trainer("--data=digits", "--backbone=nope", f"--model_dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--backbone=nope" in errors[0], proc.stderr
    assert len(proc.stderr.splitlines()) <= 6, proc.stderr
    assert errors[0] in last_run_log(tmp_path / "run")


def test_report_cli_refuses_a_folder_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.report", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "run_info.json" in proc.stderr


def test_many_classes_show_the_most_confused_and_per_class_numbers_are_right():
    import numpy as np

    from trainer.outputs import report
    from trainer.outputs import plots
    from trainer.outputs import predictions

    labels = np.repeat(np.arange(30), 10)
    guess = labels.copy()
    guess[:4] = 7  # Class 0 taken for 7 four times, 12 for 25 twice.
    guess[120:122] = 25
    p = predictions.Predictions(labels, np.eye(30)[guess])
    matrix = predictions.confusion_matrix(p, 30)
    assert report._most_confused(matrix, 20) == [0, 7, 12, 25]
    rows = predictions.per_class(matrix)
    assert rows[0] == pytest.approx({"precision": 1.0, "recall": 0.6, "f1": 0.75, "support": 10})
    assert rows[7]["precision"] == 10 / 14 and rows[7]["recall"] == 1.0
    svg = plots.heatmap(matrix[np.ix_([0, 7], [0, 7])], ["zero", "seven"])
    assert svg.count("<rect") == 4 and ">4</text>" in svg and "zero" in svg
