"""report.html of a run: the page, its sections and the end-of-run hook (the CLI: trainer.report)."""
import base64
import dataclasses
import datetime
import html
import io
import json
import os
from typing import List, Optional

import numpy as np

REPORT_NAME = "report.html"
WORST_IMAGES = 16
MAX_MATRIX_CLASSES = 20  # Beyond this, the heatmap shows the most-confused classes.

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1000px;margin:24px auto;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.sub{color:#666}.note{color:#666;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-size:13px;font-weight:600}
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#bbb}svg .mark{stroke:#999;stroke-dasharray:4 3}
svg .best{fill:none;stroke:#2ca02c;stroke-width:2.5}svg .count{font-size:11px}svg .light{fill:#fff}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.grid-images{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0;border:1px solid #ddd;padding:6px;break-inside:avoid}figure img{width:96px;height:96px;
image-rendering:pixelated;display:block;margin:0 auto 4px}figcaption{font-size:12px}.path{overflow-wrap:anywhere}
.bad{color:#b00}.good{color:#070}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}svg,table,figure{break-inside:avoid}}
"""


def build(model_dir: str, output: Optional[str] = None, predictions=None, dataset=None) -> str:
    """Writes the report of the run in `model_dir`; returns its path.

    Args:
        model_dir: the run's folder (local or gs://).
        output: where to write (default `<model_dir>/report.html`).
        predictions, dataset: the evaluation split's predictions and the loaded data, when the
            caller has them (the end of a run); otherwise they are computed here.

    Raises:
        UsageError: model_dir holds no run (no run_info.json).
    """
    from trainer.util import events
    from trainer.util import files
    from trainer.outputs import predictions as predictions_lib
    from trainer.errors import UsageError

    info = files.read_json(os.path.join(model_dir, "run_info.json"))
    if info is None:
        raise UsageError(f"{model_dir} holds no run_info.json: not a trainer run (or it has not started yet)")
    summary = files.read_json(os.path.join(model_dir, "model_summary.json")) or {}
    metrics = files.read_json(os.path.join(model_dir, "eval_metrics.json"))
    event_dir = (info.get("flags") or {}).get("checkpoint_dir") or model_dir
    training, evaluation = events.read_scalars(event_dir), events.evaluations(event_dir)
    note = None
    if predictions is None:
        try:
            predictions, dataset = _compute_predictions(model_dir, info)
        except Exception as e:  # noqa: BLE001 - the rest of the report is still worth writing.
            note = f"{type(e).__name__}: {str(e)[:300]}"
    class_names = info.get("class_names") or []
    sections = [
        _run_section(model_dir, info, summary, metrics, training),
        _metrics_section(metrics, predictions, len(class_names)),
        _curves_section(training, evaluation, info),
        _confusion_section(predictions, class_names, note),
        _images_section(predictions, dataset, info, class_names),
        _calibration_section((metrics or {}).get("calibration")),
        _tta_section((metrics or {}).get("tta")),
        _promotion_section(info.get("promotion")),
    ]
    data = {"eval_metrics": metrics, "class_names": class_names}
    if predictions is not None:
        matrix = predictions_lib.confusion_matrix(predictions, len(class_names))
        data.update(confusion_matrix=matrix.tolist(), per_class=predictions_lib.per_class(matrix),
                    examples=int(len(predictions.labels)),
                    accuracy=float(np.trace(matrix) / max(matrix.sum(), 1)))
    page = _page(model_dir, "".join(s for s in sections if s), data)
    output = output or os.path.join(model_dir, REPORT_NAME)
    _write(output, page)
    return output


def at_end(config, model, dataset, eval_input_fn, eval_metrics: dict, summary: dict, seconds: float,
           predict=None) -> None:
    """The end of a run (chief): report.html from the final model's predictions (from `predict()` when the
    caller gives it, else computed here over `eval_input_fn`), the HParams summary, and the console's
    closing lines. Failures here are warnings: the run itself succeeded."""
    from absl import logging as absl_logging

    import tensorflow as tf

    from trainer.util import console
    from trainer.outputs import evaluations
    from trainer.util import events
    from trainer.outputs import predictions as predictions_lib

    path = None
    try:
        result = None
        try:
            result = predict() if predict else None
        except Exception as e:  # noqa: BLE001 - the pass below still gives the figures.
            absl_logging.warning("report.html: no predictions from the run (%s: %s); predicting again",
                                 type(e).__name__, str(e)[:200])
        if result is not None:
            absl_logging.info("report.html: predictions of the served model's %s (%d examples)",
                              "evaluation" if result.probabilities is None else "own pass (calibrated, or the head "
                              "on the cached features)", len(result.labels))
            result.input_fn = eval_input_fn  # The images, for the thumbnails.
        elif dataset is not None and tf.io.gfile.exists(os.path.join(config.model_dir, "keras_model.h5")):
            absl_logging.info("report.html: predicting the evaluation split with keras_model.h5")
            # A fresh copy: the run's own Keras model cannot be called once the Estimator engine converted it.
            model = predictions_lib.load_run_model(config.model_dir, config, dataset.num_classes, None)
            result = predictions_lib.predict(model, eval_input_fn, config.label_mode, config.eval_steps)
            if result is not None:
                result.input_fn = eval_input_fn
        path = build(config.model_dir, predictions=result, dataset=dataset)
    except Exception as e:  # noqa: BLE001
        absl_logging.warning("report.html not written: %s: %s", type(e).__name__, e)
    try:
        scalars = {k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float))}
        evaluations.write_hparams(config.checkpoint_dir, _flags_changed(config.to_dict()), scalars)
    except Exception as e:  # noqa: BLE001
        absl_logging.warning("no HParams summary: %s: %s", type(e).__name__, e)
    best = events.best(events.evaluations(config.checkpoint_dir).get("accuracy", []))
    console.summary_block(summary, seconds, best, path)


def _compute_predictions(model_dir: str, info: dict):
    from trainer.data import sources as data_lib
    from trainer.outputs import predictions as predictions_lib

    config = predictions_lib.config_from_run_info(info)
    dataset = data_lib.load(config)
    model = predictions_lib.load_run_model(model_dir, config, dataset.num_classes, dataset.image_shape)
    if model is None:
        raise ValueError("no keras_model.h5 and no checkpoint yet")
    input_fn = predictions_lib.validation_input(config, model, dataset)
    result = predictions_lib.predict(model, input_fn, config.label_mode, config.eval_steps)
    if result is not None:
        result.input_fn = input_fn  # For the thumbnails.
    return result, dataset


def _write(path: str, text: str) -> None:
    from trainer.util import files

    files.write_atomic(path, text)


def _page(model_dir: str, body: str, data: dict) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blob = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Training report: {html.escape(model_dir)}</title><style>{_CSS}</style></head><body>"
            f"<h1>Training report</h1><div class=\"sub\">{html.escape(model_dir)} &middot; written {stamp}</div>"
            f'{body}<script type="application/json" id="report-data">{blob}</script></body></html>\n')


def _table(rows, header=None, numeric=()) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for k, value in enumerate(row):
            cls = ' class="n"' if k in numeric else ""
            cells.append(f"<td{cls}>{value}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _esc(value) -> str:
    return html.escape(str(value))


def _flags_changed(flags: dict) -> dict:
    from trainer.config import Config

    defaults = dataclasses.asdict(Config())
    changed = {}
    for key, value in sorted(flags.items()):
        default = defaults.get(key)
        if isinstance(default, tuple):
            default = json.loads(json.dumps(default))  # Tuples read back from JSON as lists.
        if key not in ("checkpoint_dir", "unique_run_dir") and value != default:
            changed[key] = value
    return changed


def _latest_checkpoint_step(model_dir: str):
    import tensorflow as tf

    try:
        latest = tf.train.latest_checkpoint(model_dir)
        return int(latest.rsplit("-", 1)[1]) if latest else None
    except (tf.errors.OpError, ValueError, IndexError):
        return None


def _run_section(model_dir, info, summary, metrics, training) -> str:
    flags = info.get("flags") or {}
    counts = info.get("counts") or {}
    classes = info.get("class_names") or []
    if metrics is not None:
        last = (metrics.get("last_evaluation") or metrics).get("global_step")  # The top level: the served model.
        status = f'<span class="good">finished</span> at step {last}' + (
            f' (serving the model of step {metrics.get("global_step")})' if last != metrics.get("global_step") else "")
    else:
        steps = [s for series in training.values() for s, _ in series]
        saved = _latest_checkpoint_step(model_dir)  # Trial c077: summaries lag (every 100 steps) behind it.
        status = f'<span class="bad">running or stopped</span> (no eval_metrics.json yet; last logged step ' \
                 f'{max(steps) if steps else 0}' + (f", latest checkpoint at step {saved}" if saved is not None
                                                    else "") + ")"
    duration = info.get("train_seconds")
    # The trainable count of the phase the run reached (model_summary.json has the first phase's: new-user c088).
    reached = [p for p in info.get("phases") or [] if isinstance(p, dict) and p.get("trainable_params") is not None]
    if summary and reached:
        summary = dict(summary, trainable_params=reached[-1]["trainable_params"])
    rows = [
        ("status", status),
        ("data", _esc(flags.get("data")) + (f" (evaluation: {_esc(flags['eval_data'])})" if flags.get("eval_data")
                                            else "")),
        ("classes", f"{len(classes)}"),
        ("model", f"{_esc(flags.get('base_model') or flags.get('model_fn') or flags.get('backbone'))}, "
                  f"{summary.get('total_params', 0):,} parameters ({summary.get('trainable_params', 0):,} "
                  f"trainable{' in the last phase' if len(reached) > 1 else ''})" if summary else _esc(flags.get("backbone"))),
        ("strategy", f"{_esc(info.get('strategy'))}, {info.get('num_replicas')} replica(s), global batch "
                     f"{flags.get('batch_size')}, {_esc(info.get('estimator', 'Estimator'))}"),
        ("TensorFlow", _esc(info.get("tf_version"))),
        ("duration", f"{duration:.0f} s of training" if duration is not None else "not recorded yet"),
    ]
    if info.get("skipped_files"):
        rows.append(("skipped files", f"{len(info['skipped_files'])}: "
                     + ", ".join(_esc(p) for p in info["skipped_files"][:5])))
    if info.get("warm_start_from"):
        rows.append(("warm start", _esc(info["warm_start_from"])))
    out = ["<h2>The run</h2><div class=\"row\">", _table(rows)]
    if counts:
        splits = sorted(counts)
        count_rows = [[_esc(name)] + [str(counts[s].get(name, 0)) for s in splits] for name in classes]
        count_rows.append(["<b>total</b>"] + [f"<b>{sum(counts[s].values())}</b>" for s in splits])
        out.append(_table(count_rows, ["class"] + splits, numeric=range(1, len(splits) + 1)))
    out.append("</div>")
    changed = _flags_changed(flags)
    if changed:
        out.append("<p>Flags that differ from the defaults:</p>")
        from trainer.config import show_value  # As typed: --augment, --classes are lists in run_info.json.

        out.append(_table([(f"--{_esc(k)}", _esc(show_value(v))) for k, v in changed.items()], ["flag", "value"]))
    phases = [p for p in info.get("phases") or [] if isinstance(p, dict)]
    if phases:  # A table, not raw JSON objects (new-user trial c024).
        shown = ("first_step", "last_step", "trainable_params", "learning_rate", "freeze", "optimizer")
        # Of the other recipe values, those that differ between phases (all are in run_info.json).
        extra = sorted(k for k in {k for p in phases for k in p} - set(shown) - {"name"}
                       if len({json.dumps(p.get(k), sort_keys=True) for p in phases}) > 1)
        rows = [[_esc(p.get("name"))] + [_esc(_cell(p.get(k))) for k in shown + tuple(extra)] for p in phases]
        out.append("<p>Phases:</p>" + _table(rows, ["phase", "from step", "to step", "trainable", "learning rate",
                                                     "freeze", "optimizer"] + extra, numeric=(1, 2, 3, 4)))
    return "".join(out)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metrics_section(metrics, predictions, num_classes) -> str:
    from trainer.outputs import predictions as predictions_lib

    if metrics is None and predictions is None:
        return ""
    def scalars(values: dict) -> list:  # Tables and lists have their own sections, not cells here.
        return [(_esc(k), f"{v:.4f}" if isinstance(v, float) else _esc(v)) for k, v in sorted(values.items())
                if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k != "served_model"]

    out = ["<h2>Final evaluation</h2>"]
    if metrics is not None:
        served = metrics.get("served_model")
        step = metrics.get("global_step")
        out.append(f'<p class="sub">The served model{f" (export/{_esc(served)})" if served else ""}, evaluated at '
                   f"step {_esc(step)}: these figures, the per-class table and the confusion matrix are its.</p>")
        out.append(_table(scalars(metrics), ["eval_metrics.json", "value"], numeric=(1,)))
        last = metrics.get("last_evaluation")
        if isinstance(last, dict):
            out.append(f'<p class="sub">The last evaluation, step {_esc(last.get("global_step"))} (not the served '
                       "model):</p>")
            out.append(_table(scalars(last), ["last_evaluation", "value"], numeric=(1,)))
    if predictions is not None:
        matrix = predictions_lib.confusion_matrix(predictions, num_classes)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        source = "the served model's evaluation" if predictions.probabilities is None else "the model"
        out.append(f'<p class="sub">From the predictions of {source} on the {int(matrix.sum())} evaluation '
                   f"examples: accuracy {accuracy:.4f}.</p>")
    return "".join(out)


def _phase_marks(info) -> list:
    marks = []
    for k, phase in enumerate(info.get("phases") or []):
        if isinstance(phase, dict):
            step = phase.get("start_step", phase.get("first_step"))
            if isinstance(step, int) and step > 0:
                marks.append((step, str(phase.get("name", f"phase {k + 1}"))))
    return marks


def _curves_section(training, evaluation, info) -> str:
    from trainer.util import events
    from trainer.outputs import plots

    marks = _phase_marks(info)
    charts = []
    loss = training.get("loss") or training.get("loss_1") or []
    charts.append(plots.line_chart("training loss", [("training loss", loss)], marks=marks))
    for tag in ("learning_rate", "lr"):
        if training.get(tag):
            charts.append(plots.line_chart("learning rate", [("learning rate", training[tag])], marks=marks))
            break
    best = events.best(evaluation.get("accuracy", []))
    charts.append(plots.line_chart(
        "evaluation accuracy", [("accuracy", evaluation.get("accuracy", []))], marks=marks,
        best=(best[0], best[1], f"best {best[1]:.4f} @ {best[0]}") if best else None))
    charts.append(plots.line_chart("evaluation loss", [("loss", evaluation.get("loss", []))], marks=marks))
    return "<h2>Curves</h2><div class=\"charts\">" + "".join(charts) + "</div>"


def _confusion_section(predictions, class_names, note) -> str:
    from trainer.outputs import plots
    from trainer.outputs import predictions as predictions_lib

    if predictions is None:
        why = f" ({_esc(note)})" if note else ""
        return f'<h2>Confusion matrix</h2><p class="note">Not available{why}.</p>'
    matrix = predictions_lib.confusion_matrix(predictions, len(class_names))
    shown = list(range(len(class_names)))
    out = ["<h2>Confusion matrix and per-class metrics</h2>"]
    if len(class_names) > MAX_MATRIX_CLASSES:
        shown = _most_confused(matrix, MAX_MATRIX_CLASSES)
        out.append(f'<p class="sub">{len(class_names)} classes: the {len(shown)} most confused are shown.</p>')
    out.append('<div class="row">' + plots.heatmap(matrix[np.ix_(shown, shown)], [class_names[i] for i in shown]))
    rows = []
    for i, row in enumerate(predictions_lib.per_class(matrix)):
        rows.append((_esc(class_names[i]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                     str(row["support"])))
    out.append(_table(rows, ["class", "precision", "recall", "F1", "support"], numeric=(1, 2, 3, 4)) + "</div>")
    return "".join(out)


def _most_confused(matrix: np.ndarray, limit: int) -> List[int]:
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    order = np.dstack(np.unravel_index(np.argsort(-errors, axis=None), errors.shape))[0]
    chosen = []
    for i, j in order:
        if errors[i, j] == 0 or len(chosen) >= limit:
            break
        for k in (int(i), int(j)):
            if k not in chosen and len(chosen) < limit:
                chosen.append(k)
    return sorted(chosen) or list(range(min(limit, len(matrix))))


def _thumbnail(pixels: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if max(image.size) < 96:
        image = image.resize((96, 96), Image.NEAREST)
    else:
        image.thumbnail((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _images_section(predictions, dataset, info, class_names) -> str:
    from trainer.outputs import predictions as predictions_lib

    input_fn = getattr(predictions, "input_fn", None)
    flags = info.get("flags") or {}
    if predictions is None or input_fn is None or flags.get("model_fn"):
        return ""
    wrong = np.nonzero(predictions.predicted != predictions.labels)[0]
    title = "<h2>Worst-misclassified validation images</h2>"
    if not len(wrong):
        return title + '<p class="note">Every evaluation example is classified correctly.</p>'
    confidence = predictions.confidence[wrong]
    worst = wrong[np.argsort(-confidence)][:WORST_IMAGES]
    images = predictions_lib.images_at(input_fn, worst)
    split = dataset.validation if dataset is not None else None
    figures = []
    for i in worst:
        if i not in images:
            continue
        true, predicted = int(predictions.labels[i]), int(predictions.predicted[i])
        if split is not None and split.paths is not None and i < len(split.paths):
            where = split.paths[i]
        else:
            where = f"{'record' if split is not None and split.shards else 'example'} {i} of the evaluation split"
        figures.append(
            f'<figure><img alt="validation example {i}" src="{_thumbnail(images[i])}"><figcaption>'
            f'true <b>{_esc(class_names[true])}</b>, predicted <b class="bad">{_esc(class_names[predicted])}</b> '
            f'({predictions.confidence[i]:.2f})<br><span class="sub path">{_esc(where)}</span>'
            "</figcaption></figure>")
    note = f'<p class="sub">{len(wrong)} of {len(predictions.labels)} misclassified; the {len(figures)} with the ' \
           "most confident wrong prediction, as the model sees them (resized):</p>"
    return title + note + '<div class="grid-images">' + "".join(figures) + "</div>"


def _reliability_svg(before, after, size: int = 260) -> str:
    """The reliability diagram: accuracy against mean confidence per bin, before and after, and the diagonal."""
    pad = 30

    def xy(x, y):
        return f"{pad + x * (size - 2 * pad):.1f},{size - pad - y * (size - 2 * pad):.1f}"

    def line(rows, color):
        points = " ".join(xy(r["confidence"], r["accuracy"]) for r in rows if r["count"])
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'

    return (f'<svg width="{size}" height="{size}" role="img" aria-label="reliability diagram">'
            f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" fill="none" stroke="#999"/>'
            f'<line x1="{xy(0, 0).split(",")[0]}" y1="{xy(0, 0).split(",")[1]}" x2="{xy(1, 1).split(",")[0]}" '
            f'y2="{xy(1, 1).split(",")[1]}" stroke="#bbb" stroke-dasharray="4"/>'
            f'{line(before, "#d62728")}{line(after, "#1f77b4")}'
            f'<text x="{pad}" y="{size - 8}" font-size="11">confidence</text>'
            f'<text x="2" y="{pad - 10}" font-size="11">accuracy</text>'
            f'<text x="{size - pad - 90}" y="{pad + 14}" font-size="11" fill="#d62728">before</text>'
            f'<text x="{size - pad - 90}" y="{pad + 28}" font-size="11" fill="#1f77b4">after</text></svg>')


def _tta_section(record) -> str:
    """--tta: the served model's figures on the evaluation split, plain and averaged over the views."""
    if not record or "plain" not in record:
        return ""
    figures = _table([(name, f"{record['plain'][key]:.4f}", f"{record[key]:.4f}") for name, key in (
        ("accuracy", "accuracy"), ("NLL", "nll"))], header=("", "plain", f"{record['n_views']} views"),
        numeric=(1, 2))
    return (f"<h2>Test-time augmentation</h2><p>{_esc(record['views'])}: each of the {record['n']} evaluation "
            "examples predicted on its views, the probabilities averaged (<code>trainer.predict "
            f"--tta={_esc(record['views'])}</code> does the same; the endpoint serves plain predictions).</p>"
            f"{figures}")


def _calibration_section(record) -> str:
    if not record:
        return ""
    if record.get("method") != "temperature":
        return f"<h2>Calibration</h2><p>Not calibrated: {_esc(record.get('skipped'))}.</p>"
    before, after = record["before"], record["after"]
    figures = _table([(name, f"{before[key]:.4f}", f"{after[key]:.4f}") for name, key in (
        ("ECE (15 equal-width bins)", "ece"), ("ECE (15 equal-mass bins)", "ece_equal_mass"),
        ("NLL", "nll"), ("Brier", "brier"))], header=("", "before", "after (cross-fitted)"), numeric=(1, 2))
    bins = _table([(f"{b['low']:.2f}-{b['high']:.2f}", b["count"], _cell(b["confidence"]), _cell(b["accuracy"]),
                    a["count"], _cell(a["confidence"]), _cell(a["accuracy"]))
                   for b, a in zip(record["reliability_before"], record["reliability_after"])],
                  header=("confidence bin", "before: n", "confidence", "accuracy", "after: n", "confidence",
                          "accuracy"), numeric=(1, 2, 3, 4, 5, 6))
    return (f"<h2>Calibration</h2><p>Temperature {record['temperature']:.4f}, fitted on the {record['n']} validation "
            f"examples and folded into the output layer: the served probabilities are calibrated, the classes "
            f"unchanged. {_esc(record.get('held_out'))}.</p>{figures}<h3>Reliability diagram</h3>"
            f"{_reliability_svg(record['reliability_before'], record['reliability_after'])}{bins}")


def _promotion_section(promotion) -> str:
    if not promotion:
        return ""
    verdict = '<span class="good">promoted</span>' if promotion.get("promoted") else \
        '<span class="bad">not promoted</span>'
    rows = [("decision", verdict), ("reason", _esc(promotion.get("reason"))),
            ("metric", _esc(promotion.get("metric"))),
            ("challenger (this run)", _esc(promotion.get("challenger")))]
    if promotion.get("champion_version"):  # The first promotion has none (new-user trial c024: "None (version None)").
        score = promotion.get("champion")
        rows.append(("champion", f"{_esc(score) if score is not None else 'not scored'} (version "
                                 f"{_esc(promotion['champion_version'])})"))
    else:
        rows.append(("champion", "none yet"))
    if promotion.get("version"):
        rows.append(("new champion version", _esc(promotion["version"])))
    return f'{_PROMOTION_START}<h2>Promotion</h2>{_table(rows)}{_PROMOTION_END}'


# The promotion section's bounds: `trainer.champion promote` rewrites that section alone (update_promotion).
_PROMOTION_START, _PROMOTION_END = '<section id="promotion">', "</section>"


def update_promotion(model_dir: str, promotion: dict) -> bool:
    """Rewrites the promotion section of the run's report.html with `promotion` (a decision applied after the run,
    by `trainer.champion promote`); the rest of the page is the run's. Returns whether a report was rewritten
    (False: no report.html, or one without a promotion section)."""
    import tensorflow as tf

    path = os.path.join(model_dir, REPORT_NAME)
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path) as f:
        page = f.read()
    start = page.find(_PROMOTION_START)
    end = page.find(_PROMOTION_END, start) if start >= 0 else -1
    if end < 0:
        return False
    _write(path, page[:start] + _promotion_section(promotion) + page[end + len(_PROMOTION_END):])
    return True
