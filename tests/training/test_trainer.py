"""train_member end to end on tiny data; schedules and the optimizer it builds."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest

import histoedge.training.data.pipeline as pipeline
from histoedge.training.callbacks.drw import effective_number_weights
from histoedge.training.config import ConfigError, OptimizerConfig, load_config
from histoedge.training.recipes import get_recipe
from histoedge.training.schedules import build_optimizer, build_schedule
from histoedge.training.trainer import train_member

TINY = ["model.filters=[4, 8]", "model.block_dropout=[0.0, 0.2]", "model.dense_units=[8]",
        "training.batch_size=16", "augmentation.stain=0.0"]


def tiny_data(n=40, size=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    base = np.where(labels == 1, 180, 70)[:, None, None, None]
    images = np.clip(base + rng.integers(-40, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One LDAM member (DRW from epoch 1) with random oversampling, smoothing and clipping."""
    out = tmp_path_factory.mktemp("member")
    config = load_config(overrides=TINY + [
        "training.label_smoothing=0.1", "optimizer.clipnorm=1.0",
        "recipes={ldam_os: {base: ldam, imbalance: oversample, oversample_method: random, "
        "drw: {start_epoch: 1}}}"], epochs=2, image_size=32, seed=7)
    images, labels = tiny_data()
    train, val = (images[:30], labels[:30]), (images[30:], labels[30:])
    calls = []
    original = pipeline.make_tf_dataset

    def spy(images, labels, num_classes, **kwargs):
        calls.append((images.copy(), labels.copy(), kwargs))
        return original(images, labels, num_classes, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "make_tf_dataset", spy)
        model = train_member(get_recipe("ldam_os", config), config, train, val, ["benign", "malignant"],
                             out, verbose=0)
    return {"model": model, "out": out, "calls": calls, "train": train, "val": val, "config": config}


def test_writes_history_csv_with_lr(trained):
    rows = list(csv.DictReader(open(trained["out"] / "history.csv")))
    assert len(rows) == 2
    assert list(rows[0])[:6] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    steps = math.ceil(2 * np.bincount(trained["train"][1]).max() / 16)  # oversampled, batch 16
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 / (1 + steps / 1000), rel=1e-4)
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)
    # validation ROC-AUC, macro over classes, is logged for the learning-onset gate
    assert all(0.0 <= float(r["val_auc"]) <= 1.0 and 0.0 <= float(r["auc"]) <= 1.0 for r in rows)


def test_model_keras_reloads_without_custom_objects(trained, tmp_path):
    x = trained["val"][0].astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", trained["model"].predict(x, verbose=0))
    script = (
        "import sys, numpy as np, keras\n"
        "model = keras.models.load_model(sys.argv[1], compile=False)\n"
        "assert not any(m.startswith('histoedge') for m in sys.modules), 'imported histoedge code'\n"
        "got = model.predict(np.load(sys.argv[2]), verbose=0)\n"
        "np.testing.assert_allclose(got, np.load(sys.argv[3]), atol=1e-6)\n"
        "assert model.output_names == ['probabilities'], model.output_names\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script, str(trained["out"] / "model.keras"),
                             str(tmp_path / "x.npy"), str(tmp_path / "want.npy")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_imbalance_and_augmentation_touch_training_data_only(trained):
    (train_x, train_y, train_kw), (val_x, val_y, val_kw) = trained["calls"]
    assert train_kw["training"] is True and val_kw["training"] is False
    assert np.bincount(train_y).tolist() == [np.bincount(trained["train"][1]).max()] * 2
    np.testing.assert_array_equal(val_x, trained["val"][0])
    np.testing.assert_array_equal(val_y, trained["val"][1])
    assert val_kw["augment"] is None and train_kw["augment"] == trained["config"].augmentation
    from histoedge.training.trainer import member_seed

    assert train_kw["seed"] == val_kw["seed"] == member_seed(7, "ldam_os")


def test_loss_smoothing_drw_and_clipping_are_applied(trained):
    model = trained["model"]
    loss = model.loss
    assert type(loss).__name__ == "LDAMLoss" and loss.label_smoothing == 0.1
    counts = np.bincount(trained["calls"][0][1])  # LDAM sees the (oversampled) training counts
    assert loss.class_counts == counts.tolist()
    np.testing.assert_allclose(loss.class_weights.numpy(), effective_number_weights(counts), rtol=1e-6)
    assert model.optimizer.clipnorm == 1.0


def test_same_seed_same_history(tmp_path):
    config = load_config(overrides=TINY + ["augmentation.rotation=10"], epochs=1, image_size=32)
    images, labels = tiny_data(n=24)
    losses = []
    for run in range(2):
        train_member(get_recipe("focal", config), config, (images[:16], labels[:16]),
                     (images[16:], labels[16:]), ["a", "b"], tmp_path / str(run), verbose=0)
        losses.append((tmp_path / str(run) / "history.csv").read_text())
    assert losses[0] == losses[1]


def test_bad_inputs_raise_config_errors(tmp_path):
    config = load_config(overrides=TINY, epochs=1, image_size=32)
    images, labels = tiny_data(n=8)
    with pytest.raises(ConfigError, match="labels must be class indices"):
        train_member(get_recipe("focal", config), config, (images, labels + 1), (images, labels),
                     ["a", "b"], tmp_path, verbose=0)
    with pytest.raises(ConfigError, match=r"\[N, S, S, 3\]"):
        train_member(get_recipe("focal", config), config, (images[..., 0], labels), (images, labels),
                     ["a", "b"], tmp_path, verbose=0)


def test_schedules_give_the_expected_learning_rates():
    inverse = build_schedule(OptimizerConfig(learning_rate=1e-3, decay_steps=1000), 10, 5)
    for step in (0, 1, 500, 1000, 5000):
        assert float(inverse(step)) == pytest.approx(1e-3 / (1 + step / 1000), rel=1e-5)
    inverse.scale.assign(0.5)
    assert float(inverse(1000)) == pytest.approx(0.25e-3, rel=1e-5)
    cosine = build_schedule(OptimizerConfig(learning_rate=0.1, schedule="cosine", decay_steps=None,
                                            min_lr_fraction=0.1), steps_per_epoch=10, epochs=10)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(cosine(100)) == pytest.approx(0.01, rel=1e-5)
    constant = build_schedule(OptimizerConfig(learning_rate=0.02, schedule="constant"), 10, 10)
    assert float(constant(0)) == float(constant(10_000)) == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="optimizer.schedule must be"):
        build_schedule(OptimizerConfig(schedule="step"), 10, 10)


def test_optimizer_clipping_and_names():
    optimizer = build_optimizer(OptimizerConfig(clipnorm=1.0), 1e-3)
    assert type(optimizer).__name__ == "Adam" and optimizer.clipnorm == 1.0
    assert build_optimizer(OptimizerConfig(), 1e-3).clipnorm is None
    sgd = build_optimizer(OptimizerConfig(name="sgd", clipvalue=0.5), 1e-2)
    assert type(sgd).__name__ == "SGD" and sgd.clipvalue == 0.5 and sgd.momentum == 0.9
    with pytest.raises(ConfigError, match="optimizer.name must be adam"):
        build_optimizer(OptimizerConfig(name="lion"), 1e-3)


def test_fit_gets_class_weights_and_drw_aware_early_stopping(tmp_path, monkeypatch):
    import keras

    seen = {}

    def fake_fit(self, *args, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(keras.Model, "fit", fake_fit)
    config = load_config(overrides=TINY, epochs=10, image_size=32)
    images, labels = tiny_data(n=20)
    train_member(get_recipe("class_weight", config), config, (images, labels), (images, labels),
                 ["a", "b"], tmp_path / "cw", verbose=0)
    counts = np.bincount(labels)
    assert seen["class_weight"] == pytest.approx({c: 20 / (2 * counts[c]) for c in (0, 1)})
    stopper = [c for c in seen["callbacks"] if isinstance(c, keras.callbacks.EarlyStopping)][0]
    assert stopper.start_from_epoch == 0 and stopper.restore_best_weights and stopper.patience == 8
    # the onset gate runs before the callbacks it gates, and both share it
    names = [type(c).__name__ for c in seen["callbacks"]]
    onset = seen["callbacks"][names.index("LearningOnset")]
    assert names.index("LearningOnset") < min(names.index("ReduceLROnPlateau"), names.index("GatedEarlyStopping"))
    assert stopper.onset is onset and seen["callbacks"][names.index("ReduceLROnPlateau")].gate is onset
    assert (onset.min_auc, onset.max_wait) == (0.75, 10)
    train_member(get_recipe("ldam", config), config, (images, labels), (images, labels),
                 ["a", "b"], tmp_path / "ldam", verbose=0)
    assert seen["class_weight"] is None
    names = [type(c).__name__ for c in seen["callbacks"]]
    assert "DeferredReweighting" in names and "ReduceLROnPlateau" in names
    drw = seen["callbacks"][names.index("DeferredReweighting")]
    stopper = seen["callbacks"][names.index("GatedEarlyStopping")]
    assert drw.start_epoch == 8 == stopper.start_from_epoch  # 80% of 10 epochs
    off = load_config(overrides=TINY + ["training.onset.enabled=false"], epochs=10, image_size=32)
    train_member(get_recipe("focal", off), off, (images, labels), (images, labels),
                 ["a", "b"], tmp_path / "focal", verbose=0)
    names = [type(c).__name__ for c in seen["callbacks"]]
    assert "LearningOnset" not in names
    assert seen["callbacks"][names.index("GatedEarlyStopping")].onset is None
    assert seen["callbacks"][names.index("ReduceLROnPlateau")].gate is None
    assert (tmp_path / "ldam" / "model.keras").is_file()


def test_member_seeds_differ_by_recipe_and_are_stable():
    from histoedge.training.trainer import member_seed

    assert member_seed(0, "ldam") == member_seed(0, "ldam")
    assert len({member_seed(0, name) for name in ("ldam", "class_weight", "oversample", "focal")}) == 4
    assert member_seed(0, "ldam") != member_seed(1, "ldam")
    assert 0 <= member_seed(2**40, "x") < 2**31 - 1


def test_multi_worker_plan_refuses_a_monitor_its_loop_does_not_log(tmp_path):
    from histoedge.training.trainer import plan_member

    config = load_config(overrides=TINY + ["training.early_stopping.monitor=val_auc"], epochs=2, image_size=32)
    images, labels = tiny_data(n=20)
    with pytest.raises(ConfigError, match="training.early_stopping.monitor: the multi-worker loop logs"):
        plan_member(get_recipe("focal", config), config, (images, labels), (images, labels), ["a", "b"], None)


def scripted_fit(val_aucs):
    """A ``Model.fit`` that drives the real callbacks with a flat loss and the given validation
    ROC-AUC (attempt k gets ``val_aucs[k]``, the last one repeating); records epochs per call."""
    epochs_run = []

    def fit(self, *args, epochs=1, initial_epoch=0, callbacks=(), **kwargs):
        auc = val_aucs[min(len(epochs_run), len(val_aucs) - 1)]
        epochs_run.append(0)
        self.stop_training = False
        for callback in callbacks:
            callback.set_model(self)
            callback.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            logs = {"loss": 0.7, "accuracy": 0.5, "val_loss": 0.7, "val_accuracy": 0.5, "val_auc": auc}
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            epochs_run[-1] = epoch + 1
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end()

    return fit, epochs_run


@pytest.mark.parametrize("val_aucs, expected", [
    ([0.5, 0.9], [10, 9]),        # dead start abandoned at epoch 10; the second learns at once
    ([0.5], [10, 10, 12]),        # never learns: two restarts, the last attempt runs to the end
    ([0.9], [9]),                 # learns at once: one attempt, early stopping from epoch 1
])
def test_a_start_that_does_not_learn_is_abandoned_and_retrained_from_other_weights(
        val_aucs, expected, tmp_path, monkeypatch, caplog):
    import keras

    fit, epochs_run = scripted_fit(val_aucs)
    monkeypatch.setattr(keras.Model, "fit", fit)
    seeds = []
    real_seed = keras.utils.set_random_seed
    monkeypatch.setattr(keras.utils, "set_random_seed", lambda seed: (seeds.append(seed), real_seed(seed)))
    config = load_config(overrides=TINY, epochs=12, image_size=32)
    images, labels = tiny_data(n=20)
    with caplog.at_level("INFO"):
        train_member(get_recipe("focal", config), config, (images, labels), (images, labels),
                     ["a", "b"], tmp_path / "focal", verbose=0)
    assert epochs_run == expected
    assert len(seeds) == len(expected) and len(set(seeds)) == len(seeds)  # new weights each attempt
    assert caplog.text.count("starting again from new weights") == len(expected) - 1
    assert (tmp_path / "focal" / "model.keras").is_file()
    rows = list(csv.DictReader(open(tmp_path / "focal" / "history.csv")))
    assert len(rows) == expected[-1]  # the history is the kept attempt's


def test_restarts_zero_keeps_the_single_attempt(tmp_path, monkeypatch):
    import keras

    fit, epochs_run = scripted_fit([0.5])
    monkeypatch.setattr(keras.Model, "fit", fit)
    config = load_config(overrides=TINY + ["training.onset.restarts=0"], epochs=12, image_size=32)
    images, labels = tiny_data(n=20)
    train_member(get_recipe("focal", config), config, (images, labels), (images, labels),
                 ["a", "b"], tmp_path / "focal", verbose=0)
    assert epochs_run == [12]


def test_standardise_takes_the_statistics_of_the_training_images_before_oversampling():
    from histoedge.training.models.cnn import channel_statistics
    from histoedge.training.trainer import prepare_member

    config = load_config(overrides=TINY, epochs=1, image_size=32)       # standardise is the default
    images, labels = tiny_data(n=40)
    train, val = (images[:30], labels[:30]), (images[30:], labels[30:])
    plan = prepare_member(get_recipe("oversample", config), config, train, val, ["a", "b"], None)
    assert len(plan.train[0]) > 30                      # SMOTE added rows ...
    layer = plan.model.get_layer("standardise").get_config()
    mean, std = channel_statistics(train[0])            # ... but the scaling is the given images'
    assert layer["scale"] == pytest.approx([1 / s for s in std])
    assert layer["offset"] == pytest.approx([-m / s for m, s in zip(mean, std)])
    assert mean != pytest.approx(channel_statistics(plan.train[0])[0])
    seeds = load_config(overrides=TINY + ["model.input_scaling=unit"], epochs=1, image_size=32)
    unit = prepare_member(get_recipe("focal", seeds), seeds, train, val, ["a", "b"], None)
    assert "rescale" in [layer.name for layer in unit.model.layers]
