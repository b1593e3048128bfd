"""Data-parallel training with ``tf.distribute``: several workers, or several local devices.

Two routes, chosen by :func:`cluster_from` (``histoedge train --distributed``):

* ``multi-worker`` (``TF_CONFIG`` names a cluster): ``MultiWorkerMirroredStrategy`` with RING
  collectives (the CPU choice; NCCL is picked automatically on GPUs) and the custom training loop
  of :func:`fit_multi_worker`.  Keras 3's ``Model.fit`` fails under this strategy
  (keras-team/keras#20585, ``Attempt to convert a value (PerReplica...)``), so the loop does what
  ``fit`` would: the recipe's own loss, optimizer, class weights and regularisation penalties,
  and the recipe's own Keras callbacks (deferred re-weighting, plateau scaling, early stopping
  with best-weight restore, the history CSV) driven through a ``keras.callbacks.CallbackList``.
  Every worker computes the same all-reduced logs, so every callback takes the same decision on
  every worker and the replicas never diverge.
* ``mirrored``: ``MirroredStrategy`` over the local devices (GPUs) with plain ``Model.fit``,
  which supports it.

In both, ``training.batch_size`` is the global batch, split over the replicas: each global
batch is exactly the one a single-worker run draws, and replica ``r`` of ``n`` takes its rows
``r, r + n, ...``.  Each worker augments and runs only its rows (tf.data's DATA sharding).

Only the chief writes the run directory.  Each worker keeps its own ``BackupAndRestore`` folder
(``BACKUP/<member>/<task>-<index>``; one folder shared by two workers fails on a file lock), so a
killed worker pair restarts from its last finished epoch.

The workers' gRPC servers listen on every interface, whatever address ``TF_CONFIG`` gives them:
run them on a private network (a Kubernetes NetworkPolicy, see ``deploy/kubernetes``).

Example::

    cluster = cluster_from("auto")          # None without TF_CONFIG
    model = train_member_distributed(cluster, recipe, config, train, val, classes, out_dir,
                                     backup_dir=Path("runs/r1/backup/ldam"))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from histoedge.training.errors import RunError

log = logging.getLogger(__name__)

MODES = ("auto", "multi-worker", "mirrored", "off")


@dataclass
class Cluster:
    """The strategy a run trains under, and this process's place in it.

    Attributes:
        strategy: the ``tf.distribute`` strategy.
        kind: ``"multi-worker"`` or ``"mirrored"``.
        task: ``"<type>-<index>"`` from ``TF_CONFIG`` (``"local-0"`` for ``mirrored``).
        is_chief: whether this process writes the run directory.
        num_workers: processes taking part.
    """

    strategy: Any
    kind: str
    task: str
    is_chief: bool
    num_workers: int

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)


def read_tf_config(env: Mapping[str, str] | None = None) -> dict | None:
    """The parsed ``TF_CONFIG``, or None when it is unset or names a single task.

    Raises:
        RunError: ``TF_CONFIG`` is not JSON or lacks ``cluster`` / ``task``.
    """
    text = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        tasks = sum(len(addresses) for addresses in cluster.values())
        task_type, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"TF_CONFIG must be JSON with 'cluster' and 'task' ({error})") from None
    if task_type not in cluster or index >= len(cluster[task_type]):
        raise RunError(f"TF_CONFIG task {task_type}-{index} is not in its cluster")
    return config if tasks > 1 else None


def _chief_task(cluster: dict) -> tuple[str, int]:
    return ("chief", 0) if "chief" in cluster else ("worker", 0)


def cluster_from(mode: str = "auto", env: Mapping[str, str] | None = None) -> Cluster | None:
    """Create the strategy for ``--distributed MODE`` (call before any other TensorFlow work).

    Args:
        mode: ``auto`` (multi-worker when ``TF_CONFIG`` names a cluster, else none),
            ``multi-worker`` (``TF_CONFIG`` required), ``mirrored`` (all local devices) or ``off``.
        env: the environment to read ``TF_CONFIG`` from (default ``os.environ``).

    Returns:
        A :class:`Cluster`, or None for an ordinary single-process run.
    """
    if mode not in MODES:
        raise RunError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None
    config = read_tf_config(env) if mode in ("auto", "multi-worker") else None
    if mode == "multi-worker" and config is None:
        raise RunError("--distributed multi-worker needs TF_CONFIG naming a cluster of two or more tasks")
    if mode == "auto" and config is None:
        return None
    import tensorflow as tf

    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d local replicas", strategy.num_replicas_in_sync)
        return Cluster(strategy, "mirrored", "local-0", True, 1)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=(tf.distribute.experimental.CommunicationImplementation.NCCL
                        if tf.config.list_physical_devices("GPU")
                        else tf.distribute.experimental.CommunicationImplementation.RING))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                         communication_options=options)
    task = config["task"]
    chief = (str(task["type"]), int(task["index"])) == _chief_task(config["cluster"])
    workers = sum(len(v) for k, v in config["cluster"].items() if k in ("chief", "worker"))
    cluster = Cluster(strategy, "multi-worker", f"{task['type']}-{task['index']}", chief, workers)
    log.info("MultiWorkerMirroredStrategy: task %s of %d workers (%d replicas)%s", cluster.task,
             workers, cluster.replicas, ", chief" if chief else "")
    return cluster


def all_sum(cluster: Cluster, values) -> np.ndarray:
    """The sum over the workers of each worker's ``values`` (a numeric array), by one all-reduce."""
    import tensorflow as tf

    values = np.asarray(values)
    mine = tf.constant(values.astype(np.float64), tf.float64)
    first = []

    def once_per_worker(context):
        # called once for each of this worker's replicas; only the first one contributes
        first.append(context.replica_id_in_sync_group)
        return mine if len(first) == 1 else tf.zeros_like(mine)

    strategy = cluster.strategy
    per_replica = strategy.experimental_distribute_values_from_function(once_per_worker)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return np.asarray(total.numpy()).astype(values.dtype).reshape(values.shape)


def broadcast(cluster: Cluster, values) -> np.ndarray:
    """The chief's ``values`` on every worker.

    Used for what only the chief can know because only it sees the run directory (the stored
    split of a resumed run, which members are finished) and to re-align workers whose backups
    ended at different epochs.
    """
    values = np.asarray(values)
    return all_sum(cluster, values if cluster.is_chief else np.zeros_like(values))


def _align_restored_state(cluster: Cluster, model, schedule) -> int:
    """Make every worker continue from the chief's restored epoch and state; returns that epoch.

    A worker killed between the last collective of an epoch and its backup write restarts one
    epoch behind the others; then the chief's weights, optimizer state and LR scale are copied
    to every worker (the workers' states are identical at equal epochs, so this loses nothing).
    """
    epoch = int(getattr(model, "_initial_epoch", None) or 0)  # set by BackupAndRestore
    chief_epoch = int(broadcast(cluster, [epoch])[0])
    if int(all_sum(cluster, [epoch != chief_epoch])[0]) == 0:
        return epoch
    log.warning("worker backups ended at different epochs; continuing from the chief's epoch %d", chief_epoch)
    for variable in list(model.weights) + list(model.optimizer.variables) + [schedule.scale]:
        variable.assign(broadcast(cluster, np.asarray(variable.numpy())))
    model._initial_epoch = chief_epoch
    return chief_epoch


def weights_digest(model) -> str:
    """SHA-256 of the model's weights (bit-exact; equal on every worker of a healthy run)."""
    import hashlib

    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _backup_callback(folder: Path, schedule):
    """Keras' ``BackupAndRestore`` for one worker's folder, also keeping the plateau LR scale.

    The weights file holds the model and optimizer state and the metadata the finished epoch;
    the learning-rate multiplier of :class:`training.schedules.ScaledSchedule` lives outside
    both, so it is stored beside them.
    """
    import keras

    class WorkerBackup(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            state = folder / "lr_scale.json"
            if state.is_file():
                schedule.scale.assign(float(json.loads(state.read_text())["scale"]))

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            tmp = folder / "lr_scale.json.tmp"
            tmp.write_text(json.dumps({"scale": float(schedule.scale.numpy())}))
            os.replace(tmp, folder / "lr_scale.json")

    return WorkerBackup(str(folder), double_checkpoint=True)


def fit_multi_worker(cluster: Cluster, plan, backup_dir: Path, *, verbose: int = 1) -> dict:
    """Train ``plan`` (a :class:`training.trainer.MemberPlan` built in the strategy's scope).

    What ``Model.fit`` would do, one epoch at a time: global batches split over the replicas,
    the loss weighted by the class weights and averaged over the global batch
    (``tf.nn.compute_average_loss``) plus the regularisation penalties, gradients all-reduced
    by the optimizer, validation loss and accuracy summed over the workers, and the plan's
    callbacks plus a per-worker ``BackupAndRestore`` driven through a ``CallbackList``.

    Returns:
        The logs of the last epoch.
    """
    import keras
    import tensorflow as tf

    strategy, model, loss = cluster.strategy, plan.model, plan.loss
    replicas = cluster.replicas
    weights = np.ones(plan.num_classes, np.float32)
    for label, weight in (plan.class_weight or {}).items():
        weights[int(label)] = weight
    class_weights = tf.constant(weights)

    def never_empty(x, y):
        # A last global batch smaller than the replica count leaves some replicas no rows, and
        # Keras layers fail on an empty batch: those get one all-zero row whose one-hot label is
        # all zeros, so its sample weight and mask are 0 and it adds nothing to loss or metrics.
        def padding():
            return (tf.zeros(tf.concat([[1], tf.shape(x)[1:]], 0), x.dtype),
                    tf.zeros(tf.concat([[1], tf.shape(y)[1:]], 0), y.dtype))
        return tf.cond(tf.shape(y)[0] > 0, lambda: (x, y), padding)

    def distributed(training: bool):
        def dataset_fn(context):
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local
            # The training pipeline repeats: one iterator for the whole run reshuffles every
            # epoch exactly as fit's does, where a new iterator per epoch would rebuild the
            # pipeline and replay the first epoch's order.
            parts = [plan.datasets(rows=(first + r, replicas))[0].repeat() if training
                     else plan.datasets(rows=(first + r, replicas))[1] for r in range(local)]
            parts = [part.map(never_empty) for part in parts]
            if local == 1:
                return parts[0]
            # consecutive elements go to consecutive local replicas
            return tf.data.Dataset.choose_from_datasets(
                parts, tf.data.Dataset.range(local).repeat(), stop_on_empty_dataset=True)
        return strategy.distribute_datasets_from_function(dataset_fn)

    def penalty():
        return tf.nn.scale_regularization_loss(tf.add_n(model.losses)) if model.losses else 0.0

    @tf.function(reduce_retracing=True)
    def train_step(batch, total):
        def step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                sample_weights = tf.reduce_sum(y * class_weights, axis=-1)
                per_sample = loss.call(y, probs) * sample_weights
                objective = tf.nn.compute_average_loss(per_sample, global_batch_size=total) + penalty()
            grads = tape.gradient(objective, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            real = tf.reduce_sum(y, axis=-1)  # 0 for a padding row
            hits = tf.cast(tf.equal(tf.argmax(y, -1), tf.argmax(probs, -1)), tf.float32)
            return tf.stack([objective, tf.reduce_sum(hits * real), tf.reduce_sum(real)])
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)

    @tf.function(reduce_retracing=True)
    def val_step(batch):
        def step(x, y):
            probs = model(x, training=False)
            real = tf.reduce_sum(y, axis=-1)  # 0 for a padding row
            hits = tf.cast(tf.equal(tf.argmax(y, -1), tf.argmax(probs, -1)), tf.float32)
            return tf.stack([tf.reduce_sum(loss.call(y, probs) * real), tf.reduce_sum(hits * real),
                             tf.reduce_sum(real)])
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)

    folder = Path(backup_dir) / cluster.task
    callbacks = keras.callbacks.CallbackList(
        plan.callbacks + [_backup_callback(folder, plan.schedule)], add_history=True,
        add_progbar=verbose > 0 and cluster.is_chief, model=model, verbose=verbose,
        epochs=plan.epochs, steps=plan.steps_per_epoch)
    batches, val_ds = iter(distributed(True)), distributed(False)
    n_train, batch_size = len(plan.train[1]), plan.batch_size
    with strategy.scope():  # the optimizer's slots are created here, not inside the step
        model.optimizer.build(model.trainable_variables)
    model.stop_training = False
    callbacks.on_train_begin()
    start = _align_restored_state(cluster, model, plan.schedule)
    if start:
        log.info("member %s: resuming from the backup in %s after epoch %d", plan.recipe.name, folder, start)
        if plan.history is not None:
            plan.history.resume(start)
    logs: dict = {}
    for epoch in range(start, plan.epochs):
        callbacks.on_epoch_begin(epoch)
        loss_sum = hits = seen = 0.0
        for step in range(plan.steps_per_epoch):
            batch = next(batches)
            callbacks.on_train_batch_begin(step)
            total = min(batch_size, n_train - step * batch_size)
            objective, hit, count = train_step(batch, tf.constant(total, tf.int64)).numpy()
            loss_sum, hits, seen = loss_sum + objective * total, hits + hit, seen + count
            callbacks.on_train_batch_end(step, {"loss": loss_sum / seen, "accuracy": hits / seen})
        val = np.zeros(3)
        for batch in val_ds:
            val += val_step(batch).numpy()
        reg = float(penalty())
        logs = {"loss": loss_sum / seen, "accuracy": hits / seen,
                "val_loss": val[0] / val[2] + reg, "val_accuracy": val[1] / val[2]}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return logs


def train_member_distributed(cluster: Cluster, recipe, config, train_data, val_data, classes: list[str],
                             out_dir: Path | None, backup_dir: Path, *, verbose: int = 1):
    """Train one member under ``cluster`` and return a plain (strategy-free) copy of it.

    The chief saves ``out_dir/model.keras`` and ``history.csv``; other workers pass
    ``out_dir=None`` and write nothing but their own backup folder under ``backup_dir``, which
    is removed when the member is finished.
    """
    from histoedge.training.trainer import plan_member, save_model, train_member

    if cluster.kind == "mirrored":
        with cluster.strategy.scope():  # fit splits each global batch over the local replicas
            model = train_member(recipe, config, train_data, val_data, classes, out_dir, verbose=verbose)
        return save_model(model, None)
    with cluster.strategy.scope():
        plan = plan_member(recipe, config, train_data, val_data, classes, out_dir, verbose=verbose)
    fit_multi_worker(cluster, plan, backup_dir, verbose=verbose)
    log.info("member %s: finished on %s; weights digest %s", recipe.name, cluster.task, weights_digest(plan.model))
    shutil.rmtree(Path(backup_dir) / cluster.task, ignore_errors=True)
    for folder in (Path(backup_dir), Path(backup_dir).parent):  # empty backup folders go too
        try:
            folder.rmdir()
        except OSError:
            break
    return save_model(plan.model, None if out_dir is None else Path(out_dir) / "model.keras")
