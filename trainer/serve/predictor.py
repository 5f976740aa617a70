"""The Custom Prediction Routine's `Predictor` for a trainer export: load, preprocess, predict, postprocess.

Vertex AI's CPR model server (google.cloud.aiplatform.prediction) calls these four; `trainer.serve.handler` calls
them across requests, so that instances of concurrent requests share one call of the model.
"""
import dataclasses
import math
from typing import Dict, List, Sequence

import numpy as np
from google.cloud.aiplatform.prediction.predictor import Predictor

from trainer.serve.model import BadRequest, ServedModel, local_model, parse_json


@dataclasses.dataclass
class Prepared:
    """One request's inputs, checked: what `predict` takes (alone or merged with others')."""

    inputs: Dict[str, object]
    count: int
    top_k: int = 0


class TrainerPredictor(Predictor):
    def __init__(self):
        super().__init__()
        self.model = None
        self.max_instances = None  # Set by the handler: checked before any instance is converted.

    def load(self, artifacts_uri: str, **kwargs) -> None:
        """Resolves the export (a version folder, an export kind folder, a model_dir or a champion folder, local or
        gs://), loads it, and answers one warm-up request whose probabilities must be finite and sum to 1."""
        self.model = ServedModel(local_model(artifacts_uri))
        warm = self.postprocess(self.predict(self.preprocess({"instances": [self.model.warm_up_instance()]})))
        total = sum(warm["predictions"][0]["probabilities"])
        if not math.isfinite(total) or abs(total - 1.0) > 1e-3:
            raise ValueError(f"the warm-up request's probabilities sum to {total}, not 1")

    def preprocess(self, prediction_input) -> Prepared:
        """A request's body (bytes, as read) or its parsed JSON -> its checked inputs; BadRequest naming the fault."""
        if isinstance(prediction_input, (bytes, bytearray)):
            prediction_input = parse_json(prediction_input)
        if not isinstance(prediction_input, dict) or "instances" not in prediction_input:
            raise BadRequest('the body must be a JSON object {"instances": [...], "parameters": {...}}')
        unknown = sorted(set(prediction_input) - {"instances", "parameters"})
        if unknown:
            raise BadRequest(f"unknown key {', '.join(map(repr, unknown))} (the body takes instances, parameters)")
        instances = prediction_input["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("`instances` must be a non-empty list")
        if self.max_instances and len(instances) > self.max_instances:
            raise BadRequest(f"{len(instances)} instances in one request; at most {self.max_instances}")
        (top_k,) = self.model.parameters(prediction_input.get("parameters"))
        return Prepared(self.model.inputs(instances), len(instances), top_k)

    def predict(self, instances: Prepared) -> tuple:
        return self.model.run(instances.inputs), instances.top_k

    def postprocess(self, prediction_results: tuple) -> dict:
        outputs, top_k = prediction_results
        return {"predictions": self.model.predictions(outputs, top_k)}


def merge(batch: Sequence[Prepared]) -> Prepared:
    """Several requests' inputs as one (their instances in order)."""
    if len(batch) == 1:
        return batch[0]
    first = batch[0].inputs
    inputs = {name: ([v for p in batch for v in p.inputs[name]] if isinstance(first[name], list)
                     else np.concatenate([p.inputs[name] for p in batch])) for name in first}
    return Prepared(inputs, sum(p.count for p in batch))


def split(outputs: Dict[str, np.ndarray], batch: Sequence[Prepared]) -> List[Dict[str, np.ndarray]]:
    """The merged call's outputs back into one dict per request."""
    parts, start = [], 0
    for prepared in batch:
        parts.append({name: value[start:start + prepared.count] for name, value in outputs.items()})
        start += prepared.count
    return parts


def one(prepared: Prepared, index: int) -> Prepared:
    """Instance `index` of a request, alone (to find the instance the model refused)."""
    return Prepared({name: value[index:index + 1] for name, value in prepared.inputs.items()}, 1)


__all__ = ["BadRequest", "Prepared", "TrainerPredictor", "merge", "split", "one"]
