"""Training on several devices with Keras' own engine, `keras.distribution` (JAX backend).

`configure("data_parallel")` replicates every variable on all devices and splits each batch
across them; the train step stays one SPMD program over the *global* batch, so the intra-class
contrastive loss and its cache, CRD's memory updates and BatchNorm statistics all see the whole
batch, exactly as on one device (tested on 4 virtual CPU devices against 1 device).
`configure("model_parallel", model_parallel_size=M)` lays the devices out as a (batch, model)
mesh and also shards the output channels of every regular convolution kernel over the M
"model" devices (a `keras.distribution.LayoutMap`); data still splits over the batch axis.

On TensorFlow, `tf.distribute.MirroredStrategy` is not offered: with these models' custom
`compute_loss` (Keras 3.15, TF 2.21) the teacher trains with a different loss than on one device
and the Distiller's gradient all-reduce fails (see BUILD.md). `configure` refuses it.
"""

import keras

KINDS = ("none", "data_parallel", "model_parallel")


def initialize_multi_host(coordinator_address, num_processes, process_id):
    """Joins a multi-host JAX job (one process per host) before any device is used.

    Wraps `keras.distribution.initialize` (`jax.distributed.initialize`): every process gets the
    same coordinator "host:port" and process count, and its own id in [0, num_processes).
    """
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    if num_processes > 1:
        if not coordinator_address:
            raise ValueError("a multi-host job needs the coordinator's host:port")
        keras.distribution.initialize(job_addresses=coordinator_address, num_processes=num_processes,
                                      process_id=process_id)


def configure(kind, model_parallel_size=1):
    """Sets (or clears, for "none") the global Keras distribution; returns the data-parallel factor.

    Call before building any model: variables take their layout when created. The returned
    factor is the number of ways each batch is split; batch sizes must be multiples of it.
    """
    if kind not in KINDS:
        raise ValueError(f"distribution {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "none":
        keras.distribution.set_distribution(None)
        return 1
    if keras.backend.backend() != "jax":
        raise ValueError(f"distribution {kind!r} needs the JAX backend (KERAS_BACKEND=jax); on "
                         f"{keras.backend.backend()}, tf.distribute.MirroredStrategy does not train these "
                         "models correctly (see BUILD.md)")
    devices = keras.distribution.list_devices()
    if kind == "data_parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return len(devices)
    m = int(model_parallel_size)
    if m < 1 or len(devices) % m:
        raise ValueError(f"model_parallel_size={model_parallel_size} must divide the {len(devices)} devices")
    mesh = keras.distribution.DeviceMesh((len(devices) // m, m), ("batch", "model"), devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[r".*_conv/kernel"] = (None, None, None, "model")  # (kh, kw, in, out): split out-channels
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    return len(devices) // m
