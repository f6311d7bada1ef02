"""The devices a training step spreads over: every GPU of the node by default (one replica each,
``tf.distribute.MirroredStrategy``), the first N with ``[train] devices = N``, one device on a CPU.

Each replica takes ``[train] batch_size`` windows of a step (the global batch is that times the
replicas) and the gradients are averaged over the global batch, so N replicas take N times fewer
steps per epoch at the reference's Adadelta learning rate of 1.0 (Adadelta adapts its step size
per parameter; no rescaling, as for the reference's batch of 128). BatchNormalization is
synchronised across replicas, so a replica's statistics are the global batch's, as on one device.
"""

from __future__ import annotations

import logging

from genreclf.errors import ConfigError

log = logging.getLogger(__name__)


def replicas(tf, requested: int) -> list:
    """Names of the devices to train on (one replica each): the node's GPUs (``requested`` = 0: all;
    N: the first N), or N logical CPU devices that :func:`genreclf.ml.tfsetup.configure_tensorflow`
    made (tests of the distributed path). [] means TensorFlow's default single device."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if requested > len(gpus):
            raise ConfigError(f"[train] devices = {requested}, but this node has {len(gpus)} GPU(s): use at most "
                              f"{len(gpus)} (0 = every GPU)")
        n = requested or len(gpus)
        return [f"/gpu:{i}" for i in range(n)] if n > 1 else []
    if requested > 1:
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < requested:
            raise ConfigError(f"[train] devices = {requested} needs GPUs; this machine has none (0 or 1 trains on "
                              "its CPU)")
        log.warning("train: %d replicas on logical devices of one CPU: the distributed path, no faster", requested)
        return [d.name for d in cpus[:requested]]
    return []


def strategy(tf, devices: list):
    """A MirroredStrategy over ``devices``, or TensorFlow's default strategy for one device."""
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def windows_seen(strategy_):
    """(a Keras metric, a callback): the metric ``windows_seen`` counts the windows an epoch computed
    (padding excluded), each replica in its own copy; the callback logs each replica's count at the
    end of every epoch and keeps them (``per_replica``): evidence that every replica trains."""
    import keras
    import tensorflow as tf

    class WindowsSeen(keras.metrics.Metric):
        def __init__(self, **kwargs):
            super().__init__(name="windows_seen", **kwargs)
            # one copy per replica, summed when read across replicas
            self.local = tf.Variable(0.0, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.SUM)

        def update_state(self, y_true, y_pred, sample_weight=None):
            if tf.distribute.in_cross_replica_context():  # Keras's symbolic build pass: not a step
                return
            n = tf.reduce_sum(tf.cast(sample_weight > 0, "float32")) if sample_weight is not None else tf.cast(
                tf.shape(y_true)[0], "float32")  # padding rows (weight 0) are not windows
            self.local.assign_add(n)

        def result(self):
            return tf.identity(self.local)

        def reset_state(self):
            self.local.assign(0.0)

    metric = WindowsSeen()

    class PerReplica(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.per_replica, self.latest = [], []

        def on_train_batch_end(self, batch, logs=None):  # the epoch's counts so far (validation resets them)
            self.latest = [int(v) for v in strategy_.experimental_local_results(metric.local)]

        def on_epoch_end(self, epoch, logs=None):
            self.per_replica.append(self.latest)
            log.info("train: epoch %d: windows per replica %s", epoch + 1, self.latest)

    return metric, PerReplica()
