"""--ema_decay under the Estimator: its evaluations and exports restore each weight's moving average (an optimizer
slot in the checkpoint: trainer/model/ema.py) into the weight, as TF1's `ExponentialMovingAverage.variables_to_restore`
did; an export saves them under the weights' names. Training restores and saves every variable as it is."""
import tensorflow as tf

from trainer.model import ema


def with_averaged_weights(model_fn, checkpoint_dir: str):
    """Wraps a model_fn: in EVAL and PREDICT (evaluation, exporters) its saver maps each weight to its average."""

    def wrapped(features, labels, mode, config):
        spec = model_fn(features, labels, mode, config)
        if mode == tf.estimator.ModeKeys.TRAIN:
            return spec
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        return spec._replace(scaffold=tf.compat.v1.train.Scaffold(saver=_RestoresAverages(variables, sharded=True)))

    return wrapped


class _RestoresAverages(tf.compat.v1.train.Saver):
    """Restores each weight from its average where the checkpoint restored has one (a checkpoint written before any
    step of its phase, or a calibrated one, has none: its weights are the model); saves (an export's variables)
    under the weights' own names, as every export is, so that every reader of an export finds its weights.

    The values are read in Python and loaded through each variable's initializer: the graph is final by then (a
    MonitoredSession's), and which checkpoint is restored is known only now."""

    def __init__(self, variables: dict, **kwargs):
        super().__init__(**kwargs)
        self._variables = variables

    def restore(self, sess, save_path):
        reader = tf.train.load_checkpoint(save_path)
        if not ema.average_names(reader.get_variable_to_shape_map(), self._variables):
            return super().restore(sess, save_path)
        values = ema.served_values(reader, self._variables)
        for name, variable in self._variables.items():
            if name not in values:
                raise ValueError(f"checkpoint {save_path} has no tensor {name}")
            variable.load(values[name], sess)
