"""Engines: what trains the run's Keras model. The stages of a run (trainer.run) reach one only through the
methods `trainer.engines.estimator.engine` lists; `make` picks it by --engine, importing only that one (the
Estimator's needs tensorflow_estimator, which TensorFlow 2.16+ does not have)."""


def make(config, plan):
    """The engine of --engine (config.engine, resolved by trainer.config.validate)."""
    if config.engine == "keras":
        from trainer.engines.keras.engine import Engine
    else:
        from trainer.engines.estimator.engine import Engine
    return Engine(config, plan)
