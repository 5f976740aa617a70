"""The augmentation ops of the recipe's second round (trainer/augment_mixing.py, trainer/augment_policies.py):
Mixup's weights against Beta(alpha, alpha) (a KS test that also rejects a wrong distribution), CutMix's boxes against
their weights, RandAugment's and TrivialAugment's draws, and each colour op against Pillow's, the library its ranges
come from (timm, torchvision)."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

from trainer import augment_mixing, augment_policies
from trainer.config import TTA_KINDS, parse_augment
from trainer.data.augment import augment_batch
from trainer.errors import UsageError

SEED = tf.constant([3, 5], tf.int64)


def _mixup_weights(alpha, n=4000):
    """Mixup's per-example weights, read back from binary labels (1 in the first half, 0 in the second)."""
    images = tf.zeros([n, 2, 2, 3])
    labels = tf.concat([tf.ones([n // 2, 1]), tf.zeros([n // 2, 1])], 0)
    _, mixed = augment_mixing.mixup(images, labels, alpha, SEED)
    return mixed.numpy()[: n // 2, 0]


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_mixup_weights_follow_beta_alpha_alpha(alpha):
    lam = _mixup_weights(alpha)
    assert stats.kstest(lam, "beta", args=(alpha, alpha)).pvalue > 0.01
    # The test can fail: the same sample is far from another Beta (the kind of mistake tensorflow/models#13490 was).
    assert stats.kstest(lam, "beta", args=(alpha, 2 * alpha)).pvalue < 1e-6


def test_mixup_blends_images_and_labels_alike():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 255, (6, 4, 4, 3)), tf.float32)
    labels = tf.one_hot([0, 1, 2, 0, 1, 2], 3)
    out, mixed = augment_mixing.mixup(images, labels, 0.4, SEED)
    lam = mixed.numpy()[[0, 1, 2], [0, 1, 2]]  # Each example's share of its own class.
    for i in range(3):
        partner = 5 - i
        if i != 1:  # Example 1's partner (4) has its class too: its share is then 1.
            expected = lam[i] * images.numpy()[i] + (1 - lam[i]) * images.numpy()[partner]
            assert np.allclose(out.numpy()[i], expected, atol=1e-3)
    assert np.allclose(mixed.numpy().sum(-1), 1.0, atol=1e-6)


def test_cutmix_labels_weigh_the_area_actually_pasted():
    n, size = 2000, 32
    inside, kept, lam = [t.numpy() for t in augment_mixing.cutmix_boxes(n, size, size, 1.0, SEED)]
    assert np.allclose(kept, 1.0 - inside.mean(axis=(1, 2)), atol=1e-6)  # Labels: the pixel share kept.
    assert stats.kstest(lam, "beta", args=(1.0, 1.0)).pvalue > 0.01
    # A box the borders do not clip covers 1 - lam of the image, up to rounding its sides to whole pixels.
    rows, cols = inside.any(axis=2), inside.any(axis=1)
    whole = ~rows[:, 0] & ~rows[:, -1] & ~cols[:, 0] & ~cols[:, -1] & inside.any(axis=(1, 2))
    side = np.sqrt(1.0 - lam[whole]) * size
    assert whole.sum() > 200
    assert np.all(np.abs(kept[whole] - lam[whole]) <= (2 * side + 1) / size ** 2 + 1e-6)
    images = tf.constant(np.arange(4)[:, None, None, None] * np.ones((4, size, size, 3)), tf.float32)
    out, labels = augment_mixing.cutmix(images, tf.one_hot([0, 1, 2, 3], 4), 1.0, SEED)
    for i in range(4):  # Every pixel is the example's own or its partner's; the labels are their shares.
        own = (out.numpy()[i] == i).mean()
        assert np.all(np.isin(out.numpy()[i], [i, 3 - i]))
        assert labels.numpy()[i, i] == pytest.approx(own, abs=1e-6)


def test_both_mixing_ops_share_the_batch_about_half_each():
    rng = np.random.default_rng(2)
    n = 400
    images = tf.constant(rng.uniform(1, 255, (n, 8, 8, 3)), tf.float32)
    out, labels = augment_batch(images, parse_augment("mixup:1,cutmix:1"), SEED, labels=tf.one_hot(np.arange(n) % 5, 5))
    x, partner = images.numpy(), images.numpy()[::-1]
    pasted = np.all(np.isclose(out.numpy(), x) | np.isclose(out.numpy(), partner), axis=(1, 2, 3))
    assert 0.4 < pasted.mean() < 0.6  # CutMix keeps pixels whole; Mixup blends them.
    again = augment_batch(images, parse_augment("mixup:1,cutmix:1"), SEED, labels=tf.one_hot(np.arange(n) % 5, 5))
    assert np.array_equal(out.numpy(), again[0].numpy())  # Seeded: a restart replays the draws.


def test_randaugment_draws_ops_uniformly_at_magnitude_m():
    draws = augment_policies.randaugment_draws(7000, 2, 9.0, SEED)
    assert len(draws) == 2
    for which, level in draws:
        counts = np.bincount(which.numpy(), minlength=len(augment_policies.OPS))
        assert stats.chisquare(counts).pvalue > 0.001 and len(counts) == 14
        assert np.allclose(np.abs(level.numpy()), 0.9)
        assert 0.45 < (level.numpy() > 0).mean() < 0.55  # Each direction half the time.
    assert not np.array_equal(draws[0][0].numpy(), draws[1][0].numpy())
    which, level = augment_policies.trivialaugment_draws(7500, SEED)
    counts = np.bincount(which.numpy() + 1, minlength=15)  # -1 is the identity.
    assert stats.chisquare(counts).pvalue > 0.001 and len(counts) == 15
    assert stats.kstest(np.abs(level.numpy()), "uniform").pvalue > 0.01


def _image(seed=0, size=24):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (size, size, 3))
    return np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)


def _ours(image, op, level, ranges="randaugment"):
    which = tf.constant([augment_policies.OPS.index(op)])
    out = augment_policies.apply(tf.constant(image[None], tf.float32), which, tf.constant([level], tf.float32),
                                 augment_policies.RANGES[ranges])
    return out.numpy()[0]


PIL_OPS = {  # (op, level) -> what Pillow does (RandAugment ranges: enhance 1 + 0.9 level, posterize 8 - 4|level|).
    ("brightness", 0.5): lambda im: ImageEnhance.Brightness(im).enhance(1.45),
    ("color", -0.5): lambda im: ImageEnhance.Color(im).enhance(0.55),
    ("contrast", 0.5): lambda im: ImageEnhance.Contrast(im).enhance(1.45),
    ("sharpness", 0.5): lambda im: ImageEnhance.Sharpness(im).enhance(1.45),
    ("posterize", 1.0): lambda im: ImageOps.posterize(im, 4),
    ("solarize", 0.5): lambda im: ImageOps.solarize(im, 128),
    ("autocontrast", 0.0): ImageOps.autocontrast,
    ("equalize", 0.0): ImageOps.equalize,
}


@pytest.mark.parametrize("op,level", list(PIL_OPS))
def test_each_colour_op_does_what_pillow_does(op, level):
    image = _image()
    expected = np.asarray(PIL_OPS[op, level](Image.fromarray(image)), np.float32)
    ours = _ours(image, op, level)
    assert np.abs(ours - expected).max() <= 1.5, op  # Pillow rounds to uint8 on the way.
    assert np.abs(expected - image).max() > 10  # Each op changes this image: the comparison is not vacuous.


def test_solarize_add_and_the_geometric_ops_move_pixels_as_said():
    image = _image(size=20)
    added = _ours(image, "solarize_add", 1.0)
    low = image < 128
    assert np.allclose(added[low], np.minimum(image[low] + 110.0, 255)) and np.allclose(added[~low], image[~low])
    shifted = _ours(image, "translate_x", 5 / (0.45 * 20))  # 5 pixels to the right, grey filling in.
    assert np.allclose(shifted[:, 5:], image[:, :-5], atol=1e-3) and np.allclose(shifted[:, :5], 128.0)
    turned = _ours(image, "rotate", 90 / 135, ranges="trivialaugment")  # A quarter turn (Wide's 135 degrees).
    assert any(np.allclose(turned, np.rot90(image, k, axes=(0, 1)), atol=1e-2) for k in (1, 3))
    same = augment_policies.apply(tf.constant(image[None], tf.float32), tf.constant([-1]), tf.constant([0.7]),
                                  augment_policies.RANGES["trivialaugment"])
    assert np.allclose(same.numpy()[0], image, atol=1e-3)  # The identity.


def test_policies_run_on_a_batch_repeatably_and_stay_in_range():
    images = tf.constant(np.stack([_image(i) for i in range(16)]), tf.float32)
    for spec in ("randaugment:2:9", "trivialaugment", "randaugment:1:0,flip"):
        out = augment_batch(images, parse_augment(spec), SEED).numpy()
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
        assert np.array_equal(out, augment_batch(images, parse_augment(spec), SEED).numpy())
        if spec != "randaugment:1:0,flip":
            changed = np.abs(out - images.numpy()).max(axis=(1, 2, 3)) > 1
            assert changed.mean() > 0.5, spec


@pytest.mark.parametrize("spec,message", [
    ("randaugment:2:11", "'randaugment:2:11' needs M (magnitude) in [0, 10]"),
    ("randaugment:0", "'randaugment:0' needs N (ops per image) in [1, 14]"),
    ("randaugment:1.5:9", "'randaugment:1.5:9' needs a whole number for N (ops per image)"),
    ("randaugment:2:9:1", "'randaugment:2:9:1': randaugment takes 2 number(s) after its name"),
    ("mixup:0", "'mixup:0' needs ALPHA in (0, 100)"),
    ("cutmix:nan", "'cutmix:nan' needs a finite ALPHA"),
    ("mixup:", "'mixup:' needs a number after the colon (or write mixup alone for 0.2)"),
    ("trivialaugment:3", "'trivialaugment:3': trivialaugment takes no amount"),
    ("zoom:1.5", "'zoom:1.5' needs an amount between 0 and 1 (a fraction)"),
])
def test_bad_amounts_are_one_line_each(spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_augment(spec)


def test_defaults_and_what_is_recorded():
    assert parse_augment("randaugment,trivialaugment,mixup,cutmix:0.5,flip,zoom") == (
        ("randaugment", 2.0, 9.0), ("trivialaugment", 0.0), ("mixup", 0.2), ("cutmix", 0.5), ("flip", 0.0),
        ("zoom", 0.1))
    assert parse_augment("randaugment:3") == (("randaugment", 3.0, 9.0),)


def test_tta_views_are_the_image_its_mirror_and_their_central_crops():
    from trainer.data import tta

    image = tf.constant(_image(size=16)[None], tf.uint8)
    plain, mirror, crop, crop_mirror = [v.numpy()[0] for v in tta.views(image, "flip_crop")]
    assert np.array_equal(plain, image.numpy()[0]) and np.array_equal(mirror, plain[:, ::-1])
    expected = tf.image.resize(tf.image.central_crop(tf.cast(image, tf.float32), 0.875), [16, 16]).numpy()[0]
    assert np.allclose(crop, expected) and np.allclose(crop_mirror, crop[:, ::-1])
    assert [len(tta.views(image, k)) for k in TTA_KINDS] == [tta.count(k) for k in TTA_KINDS] == [1, 2, 4]
