"""Training on several devices: `keras.distribution` on JAX, `tf.distribute` on TensorFlow.

`configure("data_parallel")` replicates every variable on all devices and splits each batch
across them, and every loss sees the *global* batch, exactly as on one device (tests on 2-4
virtual CPU devices against 1 device: tests/test_distribution.py):

- JAX: `keras.distribution.DataParallel`. The train step stays one SPMD program over the global
  batch, so the intra-class contrastive loss and its cache, CRD's memory updates and BatchNorm
  statistics all see the whole batch.
- TensorFlow: `tf.distribute.MirroredStrategy` over the local GPUs (else the logical CPU devices),
  or `MultiWorkerMirroredStrategy` when TF_CONFIG names several workers, set as the process's
  default strategy (`tf.distribute.experimental_set_strategy`), so models built afterwards are
  mirrored. Each replica runs the step on its share; the models gather outputs, labels and extra
  inputs of all replicas in `compute_loss` (`keras_icckd.replicas`) and return one
  replica's share of the loss; the backbones' BatchNorm all-reduces its batch statistics; state
  written in the step (the cache, CRD's memory) keeps one value ("only_first_replica"). The
  strategy is created once per process and reused (a second MirroredStrategy in one process
  fails in TensorFlow's collective ops, tensorflow/tensorflow#62790).

`configure("model_parallel", model_parallel_size=M)` (JAX only) lays the devices out as a
(batch, model) mesh and also shards the output channels of every regular convolution kernel over
the M "model" devices (a `keras.distribution.LayoutMap`); data still splits over the batch axis.
"""

import json
import os

import keras

KINDS = ("none", "data_parallel", "model_parallel")


def initialize_multi_host(coordinator_address, num_processes, process_id):
    """Joins a multi-host job (one process per host) before any device is used.

    JAX: wraps `keras.distribution.initialize` (`jax.distributed.initialize`): every process gets
    the same coordinator "host:port" and process count, and its own id in [0, num_processes).
    TensorFlow: the job is described by the TF_CONFIG environment variable (its "cluster" lists
    the workers, its "task" is this process), which must agree with `num_processes` and
    `process_id`; `configure("data_parallel")` then creates a MultiWorkerMirroredStrategy.
    """
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    if num_processes == 1:
        return
    if keras.backend.backend() == "tensorflow":
        workers, task = _tf_config()
        if (workers, task) != (num_processes, process_id):
            raise ValueError(f"a multi-worker TensorFlow job is described by TF_CONFIG: it names {workers} "
                             f"worker(s) and this task as worker {task}, but num_processes={num_processes} "
                             f"and process_id={process_id}")
        _tf_strategy()  # before any other TensorFlow operation, as MultiWorkerMirroredStrategy requires
        return
    if not coordinator_address:
        raise ValueError("a multi-host job needs the coordinator's host:port")
    keras.distribution.initialize(job_addresses=coordinator_address, num_processes=num_processes,
                                  process_id=process_id)


def _tf_config():
    """(number of workers, this task's index) from TF_CONFIG; (1, 0) without it."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task = config.get("task", {})
    index = int(task.get("index", 0)) + (1 if task.get("type") == "worker" and cluster.get("chief") else 0)
    return max(workers, 1), index


_STRATEGY = []  # the process's one tf.distribute strategy, once created


def _tf_strategy():
    """The process's tf.distribute strategy, created on first use and then reused."""
    if not _STRATEGY:
        import tensorflow as tf

        if _tf_config()[0] > 1:
            _STRATEGY.append(tf.distribute.MultiWorkerMirroredStrategy())
        else:
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _STRATEGY.append(tf.distribute.MirroredStrategy([d.name for d in devices]))
    return _STRATEGY[0]


def configure(kind, model_parallel_size=1):
    """Sets (or clears, for "none") the process's distribution; returns the data-parallel factor.

    JAX: the global `keras.distribution`. TensorFlow: the process's one tf.distribute strategy as
    its default strategy ("model_parallel" is refused). Call before building any model: variables
    take their layout (or become mirrored) when created. The returned factor is the number of
    ways each batch is split (replicas); batch sizes must be multiples of it.

    Args:
        kind: "none", "data_parallel" or "model_parallel".
        model_parallel_size: devices along the model axis of "model_parallel".

    Example:
        >>> configure("none")
        1
    """
    if kind not in KINDS:
        raise ValueError(f"distribution {kind!r}: expected one of {', '.join(KINDS)}")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if kind == "model_parallel":
            raise ValueError("distribution 'model_parallel' needs the JAX backend (KERAS_BACKEND=jax); "
                             "TensorFlow offers data_parallel (tf.distribute)")
        if kind == "none":
            if _STRATEGY:
                tf.distribute.experimental_set_strategy(None)
            return 1
        tf.distribute.experimental_set_strategy(_tf_strategy())
        return _tf_strategy().num_replicas_in_sync
    if kind == "none":
        keras.distribution.set_distribution(None)
        return 1
    devices = keras.distribution.list_devices()
    if kind == "data_parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return len(devices)
    m = int(model_parallel_size)
    if m < 1 or len(devices) % m:
        raise ValueError(f"model_parallel_size={model_parallel_size} must divide the {len(devices)} devices")
    import jax

    if jax.process_count() > 1 and jax.local_device_count() % m:
        # The mesh's rows are consecutive devices, each process's together: a model axis wider than
        # one process's devices would put several processes on one row, which must then read the
        # same data, while every process reads its own share of the batch.
        raise ValueError(f"model_parallel_size={m} must divide the {jax.local_device_count()} devices of each "
                         f"process (--num_processes={jax.process_count()}: a model axis may not span processes)")
    mesh = keras.distribution.DeviceMesh((len(devices) // m, m), ("batch", "model"), devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[r".*_conv/kernel"] = (None, None, None, "model")  # (kh, kw, in, out): split out-channels
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    return len(devices) // m


def check_even_split(sizes, factor):
    """Refuses sizes that `factor` data-parallel devices cannot split evenly.

    Every batch is split into `factor` equal shares and Keras does not pad the last one, so the
    batch sizes and the number of examples evaluated must be multiples of the factor.

    Args:
        sizes: {name: size}, named as the message should name them (e.g. "--batch_size").
        factor: the data-parallel factor that `configure` returned.

    Raises:
        ValueError: for the first size that is not a multiple of `factor`.

    Example:
        >>> check_even_split({"--batch_size": 64, "--eval_batch_size": 256}, 4)  # passes
        >>> check_even_split({"--batch_size": 6}, 4)
        Traceback (most recent call last):
        ...
        ValueError: --batch_size: 6 is not a multiple of the 4 data-parallel devices
    """
    for name, size in sizes.items():
        if size % factor:
            raise ValueError(f"{name}: {size} is not a multiple of the {factor} data-parallel devices")
