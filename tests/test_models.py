"""The backbone registry, freezing semantics, reference parameter counts, heads."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.model import backbones, models
from trainer.config import Config
from trainer.errors import UsageError

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.


def build(**kw):
    tf.keras.backend.clear_session()
    kw.setdefault("weights", "none")
    return models.build_model(Config(**kw), kw.pop("num_classes", None) or 3)


def counts(model):
    s = models.summarize(model)
    return s["trainable_params"], s["non_trainable_params"]


def test_registry_lists_every_advertised_backbone():
    assert set(backbones.BACKBONES) == {"mlp", "small_cnn", "mobilenet_v2", "inception_v3", "vgg16", "vgg19",
                                     "resnet50", "xception", "densenet121", "efficientnet_b0"}
    with pytest.raises(UsageError, match="--backbone=alexnet.*mobilenet_v2"):
        backbones.get_backbone("alexnet")


@pytest.mark.parametrize("freeze, expected", [
    ("15", (151_023_621 + 7_079_424, 7_635_264)),
    ("all", (151_023_621, 14_714_688)),
])
def test_vgg16_reference_figures(freeze, expected):
    model = build(backbone="vgg16", image_size=256, head_pooling="flatten", head_units=(4096, 4096),
                  freeze=freeze, num_classes=5)
    assert counts(model) == expected


def test_inception_v3_cut_at_mixed7_reference_figures():
    tf.keras.backend.clear_session()
    config = Config(backbone="inception_v3", weights="none", image_size=150, cut_layer="mixed7",
                    head_pooling="flatten", head_units=(1024,), dropout=0.2, label_mode="binary", freeze="all")
    assert counts(models.build_model(config, 2)) == (38_537_217, 8_975_264)


def trunk_flags(model):
    trunk = model.get_layer("small_cnn")
    return [layer.trainable for layer in trunk.layers]


def test_freeze_first_n_counts_the_input_layer():
    model = build(backbone="small_cnn", image_size=8, freeze="3")  # input, conv1, bn1
    assert trunk_flags(model) == [False] * 3 + [True] * 6


def test_freeze_minus_n_leaves_the_last_n_trainable():
    model = build(backbone="small_cnn", image_size=8, freeze="-2")
    assert trunk_flags(model) == [False] * 7 + [True] * 2


def test_freeze_all_and_none():
    assert not any(trunk_flags(build(backbone="small_cnn", image_size=8, freeze="all")))
    assert all(trunk_flags(build(backbone="small_cnn", image_size=8, freeze="none")))


@pytest.mark.parametrize("spec", ["10", "-10", "some"])
def test_freeze_out_of_range_or_invalid(spec):
    with pytest.raises(UsageError, match=f"--freeze={spec}"):
        build(backbone="small_cnn", image_size=8, freeze=spec)


def test_frozen_batchnorm_runs_in_inference_mode():
    """With the trunk frozen, a training-mode call must not touch BN statistics nor use batch stats."""
    model = build(backbone="small_cnn", image_size=8, freeze="all")
    bn = model.get_layer("small_cnn").get_layer("bn1")
    before = bn.moving_mean.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), rtol=1e-5)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def test_partly_frozen_batchnorm_in_frozen_part_stays_fixed():
    model = build(backbone="small_cnn", image_size=8, freeze="3")  # bn1 frozen, bn2 trainable
    trunk = model.get_layer("small_cnn")
    bn1, bn2 = trunk.get_layer("bn1"), trunk.get_layer("bn2")
    before1, before2 = bn1.moving_mean.numpy().copy(), bn2.moving_mean.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    model(x, training=True)
    np.testing.assert_array_equal(bn1.moving_mean.numpy(), before1)
    assert not np.array_equal(bn2.moving_mean.numpy(), before2)


def test_binary_head_is_one_sigmoid_unit_and_needs_two_classes():
    model = build(backbone="mlp", image_size=8, label_mode="binary", num_classes=2)
    assert model.output_shape == (None, 1)
    with pytest.raises(UsageError, match="binary"):
        build(backbone="mlp", image_size=8, label_mode="binary", num_classes=3)


def test_head_layers_and_pooling():
    model = build(backbone="small_cnn", image_size=16, head_pooling="max", head_units=(8, 4), dropout=0.5)
    names = [layer.name for layer in model.layers]
    assert names[-6:] == ["head_pool", "head_dense_1", "head_dropout_1", "head_dense_2", "head_dropout_2",
                          "probabilities"]
    assert isinstance(model.get_layer("head_pool"), tf.keras.layers.GlobalMaxPooling2D)


def test_caffe_preprocessing_matches_keras_preprocess_input():
    model = build(backbone="vgg16", image_size=32)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    front = tf.keras.Model(model.input, model.get_layer("preprocess").output)
    expected = tf.keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(front(x), expected, rtol=1e-5, atol=1e-4)
    assert models.summarize(front)["total_params"] == 0


@pytest.mark.parametrize("backbone, module", [("mobilenet_v2", "mobilenet_v2"), ("densenet121", "densenet")])
def test_other_preprocessing_modes_match_keras(backbone, module):
    model = build(backbone=backbone, image_size=32)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    front = tf.keras.Model(model.input, model.get_layer("preprocess").output)
    expected = getattr(tf.keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(front(x), expected, rtol=1e-5, atol=1e-4)


def test_cut_layer_unknown_suggests_close_names():
    with pytest.raises(UsageError, match="close matches: fc2, fc1"):
        build(backbone="mlp", image_size=8, cut_layer="fc")


def test_base_model_trunk_drops_layers_and_keeps_head_names_unique(tmp_path):
    base = build(backbone="mlp", image_size=8, head_units=(16,))
    path = str(tmp_path / "base.h5")
    base.save(path)
    model = build(base_model=path, drop_layers=1, head_units=(16,), num_classes=2)
    trunk = model.get_layer("base_trunk")
    assert trunk.output_shape == (None, 16)  # base's head_dense_1 output
    assert not any(layer.trainable for layer in trunk.layers)  # --freeze defaults to all
    assert "head_dense_1_new" in [layer.name for layer in model.layers]
    names = [w.name for w in model.weights]
    assert len(names) == len(set(names))


def test_model_fn_must_return_a_functional_model():
    with pytest.raises(UsageError, match="could not be imported"):
        build(model_fn="no_such_module:fn")
    with pytest.raises(UsageError, match="raised TypeError"):
        build(model_fn="json:dumps")
    with pytest.raises(UsageError, match="functional tf.keras.Model, not str"):
        build(model_fn="os:getcwd")


def test_a_numeric_freeze_counts_the_layers_of_a_nested_base_model(tmp_path):
    """Trial c146: a --base_model wrapping a model (MobileNetV2 in a functional model, say) counted the nested
    model as one layer, so --freeze=-2 ("train only the last 2") unfroze all of it."""
    tf.keras.backend.clear_session()
    inner = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3, name="c1"),
                                 tf.keras.layers.Conv2D(4, 3, name="c2"), tf.keras.layers.Conv2D(4, 3, name="c3"),
                                 tf.keras.layers.GlobalAveragePooling2D(name="gap")], name="inner")
    inputs = tf.keras.Input((8, 8, 3))
    outputs = tf.keras.layers.Dense(2, name="old_head")(inner(inputs))
    path = str(tmp_path / "nested.h5")
    tf.keras.Model(inputs, outputs).save(path)
    model = build(base_model=path, drop_layers=1, freeze="-2", num_classes=2)
    trunk = model.get_layer("base_trunk")
    assert [layer.name for layer in models.freeze_units(trunk) if layer.trainable and layer.weights] == ["c3"]
    trainable = {w.name.split("/")[0] for w in model.trainable_weights}
    assert "c3" in trainable and not {"c1", "c2"} & trainable
    with pytest.raises(UsageError, match="the trunk has 5 layers"):  # input, c1, c2, c3, gap
        build(base_model=path, drop_layers=1, freeze="6", num_classes=2)
