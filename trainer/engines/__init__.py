"""Engines: what trains the run's Keras model, behind one seam (trainer.engines.base.Engine). `get` picks one by
--engine, importing only that one (the Estimator's needs tensorflow_estimator, which TensorFlow 2.16+ lacks)."""
import importlib

# --engine -> the module whose `Engine` subclasses trainer.engines.base.Engine.
ENGINES = {"keras": "trainer.engines.keras.engine", "estimator": "trainer.engines.estimator.engine"}


def get(name: str):
    """The Engine class of --engine=`name` (config.engine, resolved by trainer.config.validate)."""
    return importlib.import_module(ENGINES[name]).Engine


def make(config, plan):
    """The engine of --engine for the run's distribution plan."""
    return get(config.engine)(config, plan)
