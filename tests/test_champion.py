"""Scheduled retraining: champion/challenger gate, warm start, atomic promotion (local and on GCS)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from conftest import REPO, run_cli
from trainer import champion as champion_cli
from trainer.retrain import champion_store as champion
from trainer.stages import experiment
from trainer.config import Config

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.

RUN = dict(data="digits", backbone="mlp", eval_throttle_secs=0, save_checkpoints_steps=100)


def train(tmp_path, name, champion_dir, **kw):
    config = Config(model_dir=str(tmp_path / name), champion_dir=champion_dir, **{**RUN, **kw})
    summary = experiment.train_and_evaluate(config)
    return summary, json.loads((tmp_path / name / "run_info.json").read_text())


def pointer_bytes(champion_dir):
    store = champion.open_store(champion_dir)
    _, token = store.read_pointer()
    if isinstance(store, champion.LocalStore):
        return token
    return store._bucket().blob(store._name(champion.POINTER)).download_as_bytes()


def check_gate(tmp_path, champion_dir):
    # A first run promotes.
    _, first = train(tmp_path, "first", champion_dir, train_steps=150)
    assert first["promotion"]["promoted"] is True and first["promotion"]["reason"] == "no champion yet"
    store = champion.open_store(champion_dir)
    pointer, _ = store.read_pointer()
    assert pointer["version"] == first["promotion"]["version"] and pointer["source_run"].endswith("first")
    assert store.versions() == [pointer["version"]]
    before = pointer_bytes(champion_dir)
    # A deliberately weak challenger (1 step) does not, and CHAMPION.json is byte-for-byte unchanged.
    _, weak = train(tmp_path, "weak", champion_dir, train_steps=1, learning_rate=1e-5)
    assert weak["promotion"]["promoted"] is False
    assert weak["promotion"]["challenger"] < weak["promotion"]["champion"]
    assert pointer_bytes(champion_dir) == before
    # Warm-started from the champion, one step scores about as well as it; from scratch, far below.
    _, warm = train(tmp_path, "warm", champion_dir, train_steps=1, learning_rate=1e-5, warm_start_from="champion")
    assert warm["promotion"]["challenger"] >= first["promotion"]["challenger"] - 0.02
    assert weak["promotion"]["challenger"] < 0.5 < warm["promotion"]["challenger"]
    return store, pointer


def test_gate_and_warm_start_on_a_local_folder(tmp_path):
    champion_dir = str(tmp_path / "champion")
    store, pointer = check_gate(tmp_path, champion_dir)
    version_dir = tmp_path / "champion" / pointer["version"]
    assert (version_dir / "model" / "saved_model.pb").exists() and (version_dir / "keras_model.h5").exists()
    assert json.loads((version_dir / "metrics.json").read_text())["accuracy"] == pointer["metrics"]["accuracy"]


def test_gate_warm_start_race_and_rollback_on_gcs(tmp_path, gcs_server):
    champion_dir = "gs://test-bucket/champions/digits"
    store, first = check_gate(tmp_path, champion_dir)
    # Two runs race to replace CHAMPION.json from the same starting point: exactly one wins.
    _, token = store.read_pointer()
    export_dir = str(next((tmp_path / "first" / "export" / "best").iterdir()))
    h5 = str(tmp_path / "first" / "keras_model.h5")
    results = {}

    def contender(name):
        results[name] = champion.promote(store, token, f"race-{name}", export_dir, h5, {"accuracy": 0.99},
                                         name, first["version"])

    threads = [threading.Thread(target=contender, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(n for n, won in results.items() if won)
    pointer, _ = store.read_pointer()
    assert pointer["version"] == f"race-{winner}" and pointer["previous"] == first["version"]
    assert f"race-{winner}" in store.versions()
    # Rollback points CHAMPION.json back at the previous version.
    proc = subprocess.run([sys.executable, "-m", "trainer.champion", "rollback", f"--champion_dir={champion_dir}"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.read_pointer()[0]["version"] == first["version"]
    history = subprocess.run([sys.executable, "-m", "trainer.champion", "history", f"--champion_dir={champion_dir}"],
                             cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert f"* {first['version']}" in history.stdout and f"race-{winner}" in history.stdout


def test_a_promotion_that_dies_midway_leaves_the_champion_intact(tmp_path, monkeypatch):
    champion_dir = str(tmp_path / "champion")
    train(tmp_path, "first", champion_dir, train_steps=150)
    before = pointer_bytes(champion_dir)
    real_copy, calls = tf.io.gfile.copy, []

    def dying_copy(*args, **kwargs):  # The process "dies" after copying part of the new version.
        calls.append(args)
        if len(calls) == 2:
            raise SystemExit("killed during promotion")
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, "copy", dying_copy)
    with pytest.raises(SystemExit):  # The point rule: a promotion whatever the significance (the copy is tested).
        train(tmp_path, "second", champion_dir, train_steps=400, learning_rate=0.003, promote_test="none")
    assert len(calls) == 2
    assert pointer_bytes(champion_dir) == before
    store = champion.open_store(champion_dir)
    pointer, _ = store.read_pointer()
    assert store.versions() == [pointer["version"]]  # The half-copied version is not a version.
    assert tf.keras.models.load_model(store.keras_model(pointer["version"]), compile=False)


def test_rollback_without_history_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.champion", "show", f"--champion_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "no champion yet" in proc.stderr


def test_unique_run_dir_uses_the_job_id_and_is_applied_once(monkeypatch):
    from trainer.config import validate

    monkeypatch.setenv("CLOUD_ML_JOB_ID", "job-123")
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://b/runs/retrain/model")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://b/runs/retrain/checkpoints")
    config = validate(Config(data="digits", unique_run_dir=True))
    assert config.model_dir == "gs://b/runs/retrain/model/job-123"
    assert config.checkpoint_dir == "gs://b/runs/retrain/checkpoints/job-123"
    assert validate(config).model_dir == config.model_dir


def test_sigkill_during_promotion_never_exposes_a_partial_model(tmp_path):
    import signal

    champion_dir = tmp_path / "champion"
    train(tmp_path, "first", str(champion_dir), train_steps=100)
    before = (champion_dir / champion.POINTER).read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=mlp", "--train_steps=400",
         "--eval_throttle_secs=0", f"--model_dir={tmp_path / 'second'}", f"--champion_dir={champion_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "promotion: copying the challenger" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run must have reached promotion"
    pointer = json.loads((champion_dir / champion.POINTER).read_text())
    named = champion_dir / pointer["version"]
    assert (champion_dir / champion.POINTER).read_bytes() == before or (named / "metrics.json").exists()
    for name in ("metrics.json", "keras_model.h5", "model/saved_model.pb"):
        assert (named / name).exists(), name
    for version in champion.open_store(str(champion_dir)).versions():
        assert (champion_dir / version / "model" / "saved_model.pb").exists()


def test_a_champion_of_other_classes_is_scored_by_class_name(tmp_path):
    """Issue 20: same class count, other names (scored by index before: its class-0 output counted as the
    challenger's class 0); another count (blocked before, with nothing on the console, for every later run)."""
    champion_dir = str(tmp_path / "champion")
    _, first = train(tmp_path, "first", champion_dir, classes=("0", "1", "2"), train_steps=150)
    assert first["promotion"]["promoted"] is True
    # Label 0 here is class "1": by index, the champion would score near 0 on the classes both know.
    proc = run_cli("--data=digits", "--classes=1,0,3", "--backbone=mlp", "--train_steps=1", "--learning_rate=1e-5",
                   f"--champion_dir={champion_dir}", f"--model_dir={tmp_path / 'renamed'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "renamed" / "run_info.json").read_text())["promotion"]
    # All of this run's examples; the champion does not know "3", so those (about a third) count as wrong for it.
    assert record["compared_on_classes"] == ["1", "0", "3"] and record["champion_classes"] == ["0", "1", "2"]
    assert record["champion_unknown_classes"] == ["3"]
    assert record["champion"] > 0.6 and record["promoted"] is False
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("promotion: ")]  # On the console.
    assert line.startswith("promotion: not promoted (challenger accuracy") and \
        line.endswith("compared on this run's 3 classes (the champion does not know 3: its examples count as wrong "
                      "for it; its outputs of 2, which this run lacks, left out))")
    # A class added: compared on all four, decided and printed; never a dead end.
    _, wider = train(tmp_path, "wider", champion_dir, classes=("0", "1", "2", "3"), train_steps=150)
    record = wider["promotion"]
    assert record["compared_on_classes"] == ["0", "1", "2", "3"] and record["champion_unknown_classes"] == ["3"]
    assert record["champion"] > 0.65
    assert "cannot be evaluated" not in record["reason"]
    # No class in common (fewer than 2): the challenger is the only model of its class set, and is promoted.
    _, other = train(tmp_path, "other", champion_dir, classes=("7", "8"), train_steps=50)
    assert other["promotion"]["promoted"] is True and "cannot be scored" in other["promotion"]["reason"]


def test_each_rollback_goes_one_champion_further_back(tmp_path):
    """Trial c097/c098: a second rollback re-instated the version the first one had rolled away from."""
    champion_dir = str(tmp_path / "champion")
    store = champion.open_store(champion_dir)
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("model")
    (tmp_path / "keras_model.h5").write_text("weights")
    for version in ("v1", "v2", "v3"):
        pointer, token = store.read_pointer()
        assert champion.promote(store, token, version, str(export), str(tmp_path / "keras_model.h5"),
                                {"accuracy": 0.5}, "run", pointer["version"] if pointer else None,
                                champion.lineage(pointer) + [pointer["version"]] if pointer else [])
    assert champion.rollback(champion_dir)["version"] == "v2"
    back = champion.rollback(champion_dir)
    assert (back["version"], back["rolled_back_from"], back["previous"]) == ("v1", "v2", None)
    with pytest.raises(champion.UsageError, match="v1 has no earlier champion"):
        champion.rollback(champion_dir)
    assert champion.rollback(champion_dir, to="v3")["version"] == "v3"  # Forward only when named.
    assert champion.rollback(champion_dir)["version"] == "v1"


def test_a_lost_reply_to_the_pointer_write_is_recognised_as_a_win(gcs_server, tmp_path, monkeypatch):
    """SRE trial B10: the server committed CHAMPION.json, the reply was lost, the client's retry met 412, and a real
    promotion was reported as 'lost the race'. Here the real write goes through to the loopback server and the
    client then sees what its retry would (PreconditionFailed)."""
    from google.api_core import exceptions
    from google.cloud.storage import Blob

    store = champion.open_store("gs://test-bucket/champions/lost")
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("model")
    (tmp_path / "keras_model.h5").write_text("weights")
    real = Blob.upload_from_string

    def committed_then_lost(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.name.endswith(champion.POINTER):
            raise exceptions.PreconditionFailed("the retry of a committed write")

    monkeypatch.setattr(Blob, "upload_from_string", committed_then_lost)
    _, token = store.read_pointer()
    assert champion.promote(store, token, "v1", str(export), str(tmp_path / "keras_model.h5"), {"accuracy": 1.0},
                            "run", None) is True
    # A real loser still loses: the pointer names another version.
    assert champion.promote(store, token, "v2", str(export), str(tmp_path / "keras_model.h5"), {"accuracy": 1.0},
                            "run", None) is False
    assert store.read_pointer()[0]["version"] == "v1"


def test_history_lists_every_version_when_one_metrics_file_is_damaged(tmp_path, capsys):
    """SRE trial (with B12): `champion history`, the repair tool, died in a JSONDecodeError."""
    two_versions(tmp_path)
    (tmp_path / "c" / "v1" / "metrics.json").write_text('{"accura')
    assert champion_cli.main(["history", f"--champion_dir={tmp_path / 'c'}"]) == 0
    out = capsys.readouterr().out
    assert "  v1 (metrics.json unreadable: JSONDecodeError)" in out and '* v2 {"accuracy": 0.5}' in out


def test_leftovers_of_failed_promotions_are_removed_at_the_next_once_10_minutes_old(tmp_path):
    """SRE trial W1: half-copied versions and pointer temporaries of failed promotions stayed for ever."""
    root = tmp_path / "c"
    store = champion.open_store(str(root))
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("model")
    (tmp_path / "k.h5").write_text("weights")
    champion.promote(store, None, "v1", str(export), str(tmp_path / "k.h5"), {"accuracy": 0.5}, "run", None)
    old, young = time.time() - 11 * 60, time.time() - 9 * 60
    for name, when in ((".v0.partial", old), (".v9.partial", young), ("CHAMPION.json.tmp-0123abcd", old),
                       ("CHAMPION.json.tmp-4567ef01", young)):
        if name.endswith(".partial"):
            (root / name / "model").mkdir(parents=True)
            (root / name / "model" / "saved_model.pb").write_text("half")
            os.utime(root / name / "model" / "saved_model.pb", (when, when))
        else:
            (root / name).write_text("{")
        os.utime(root / name, (when, when))
    _, token = store.read_pointer()
    assert champion.promote(store, token, "v2", str(export), str(tmp_path / "k.h5"), {"accuracy": 0.6}, "run", "v1")
    assert sorted(os.listdir(root)) == [".lock", ".v9.partial", "CHAMPION.json", "CHAMPION.json.tmp-4567ef01",
                                        "v1", "v2"]
    assert store.versions() == ["v1", "v2"]


def full_disk_on_fsync(monkeypatch):
    import errno

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def two_versions(tmp_path):
    store = champion.open_store(str(tmp_path / "c"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("model")
    (tmp_path / "k.h5").write_text("weights")
    for version in ("v1", "v2"):
        pointer, token = store.read_pointer()
        champion.promote(store, token, version, str(export), str(tmp_path / "k.h5"), {"accuracy": 0.5}, "run",
                         pointer["version"] if pointer else None)
    return store, (tmp_path / "c" / champion.POINTER).read_bytes()


def test_a_rollback_that_fails_to_write_leaves_no_temporary(tmp_path, monkeypatch):
    """Before: each failed rollback left a CHAMPION.json.tmp-* of its own (removed only by a later promotion)."""
    store, before = two_versions(tmp_path)
    full_disk_on_fsync(monkeypatch)
    with pytest.raises(OSError):
        champion.rollback(str(tmp_path / "c"))
    assert not [n for n in os.listdir(tmp_path / "c") if ".tmp-" in n]
    assert (tmp_path / "c" / champion.POINTER).read_bytes() == before


def test_a_full_disk_during_rollback_is_one_error_line(tmp_path, monkeypatch, capsys):
    _, before = two_versions(tmp_path)
    full_disk_on_fsync(monkeypatch)
    assert champion_cli.main(["rollback", f"--champion_dir={tmp_path / 'c'}"]) == 1
    err = capsys.readouterr().err.splitlines()
    pointer = tmp_path / "c" / champion.POINTER
    assert len(err) == 1 and err[0].startswith(f"error: no space left on device writing {pointer}: "), err
    assert err[0].endswith("CHAMPION.json is unchanged and no temporary file of this attempt is left")
    assert (tmp_path / "c" / champion.POINTER).read_bytes() == before


@pytest.mark.parametrize("argv, fragment", [(["crown", "--champion_dir=x"], "invalid choice: 'crown'"),
                                            (["--champion_dir=x"], "the following arguments are required: command")])
def test_a_bad_or_missing_subcommand_is_one_error_line(capsys, argv, fragment):
    """Trial c214/c215: argparse's usage block and exit 2, unlike every other tool's `error:` line and exit 1."""
    with pytest.raises(SystemExit) as raised:
        champion_cli.main(argv)
    err = capsys.readouterr().err
    assert raised.value.code == 1 and err.startswith("error:") and fragment in err and len(err.splitlines()) == 1


def test_promote_without_a_run_is_one_error_line(capsys):
    assert champion_cli.main(["promote", "--champion_dir=x"]) == 1
    err = capsys.readouterr().err
    assert err == "error: promote needs --model_dir: the run trained with --promote=false\n"


def test_a_gate_recorded_with_relative_paths_is_promoted_from_another_folder(tmp_path):
    """A run gated with `--champion_dir=champ --promote=false` in one folder, promoted by `trainer.champion promote`
    typed in another: `champ` there names another store (refused: the gate compared with the first), and the path
    that names the first store promotes. The run's record says where its relative paths were given from (before,
    the relative path could not be compared and either one was accepted). The run's report.html then says it was
    promoted (it kept saying "not promoted")."""
    work, elsewhere = tmp_path / "work dir", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=mlp",
                           "--train_steps=20", "--eval_throttle_secs=0", "--model_dir=run", "--champion_dir=champ",
                           "--promote=false"], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((work / "run" / "run_info.json").read_text())["working_dir"] == str(work)
    report = (work / "run" / "report.html").read_text()
    assert "CHAMPION.json left as it is (--promote=false)" in report and ">not promoted<" in report

    def promote(*args):
        return subprocess.run([sys.executable, "-m", "trainer.champion", "promote", *args], cwd=elsewhere,
                              capture_output=True, text=True, timeout=300)

    refused = promote("--champion_dir=champ", "--model_dir=../work dir/run")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert refused.stderr.splitlines()[-1] == (f"error: --model_dir=../work dir/run was gated against "
                                               f"--champion_dir={work / 'champ'}, not champ")
    assert not (elsewhere / "champ").exists() and not (work / "champ" / "CHAMPION.json").exists()
    promoted = promote("--champion_dir=../work dir/champ", "--model_dir=../work dir/run")
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert json.loads(promoted.stdout)["promoted"] is True
    version = json.loads((work / "champ" / "CHAMPION.json").read_text())["version"]
    assert (work / "champ" / version / "model" / "saved_model.pb").exists()
    # report.html's promotion section says what promote did (it kept the run's "not promoted"); the rest is the run's.
    after = (work / "run" / "report.html").read_text()
    section = after[after.index('<section id="promotion">'):]
    assert ">promoted<" in section and version in section and "left as it is" not in section
    assert after[:after.index('<section id="promotion">')] == report[:report.index('<section id="promotion">')]
