"""Backend-neutral helpers shared by the tests: gradients and jit for TF and JAX."""

import doctest
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def backend():
    return keras.backend.backend()


def gradients(fn, *args):
    """d sum(fn(*args)) / d args, as NumPy arrays, on the current backend."""
    args = [keras.ops.convert_to_tensor(np.asarray(a, "float32")) for a in args]
    if backend() == "jax":
        import jax

        grads = jax.grad(lambda *xs: keras.ops.sum(fn(*xs)), argnums=tuple(range(len(args))))(*args)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for a in args:
                tape.watch(a)
            total = keras.ops.sum(fn(*args))
        grads = tape.gradient(total, args)
    return [np.zeros(a.shape, "float32") if g is None else keras.ops.convert_to_numpy(g)
            for a, g in zip(args, grads)]


def jitted(fn):
    """fn compiled with XLA on the current backend."""
    if backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def to_numpy(tree):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, tree)


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


_OTHER_BACKEND_SCRIPT = textwrap.dedent("""
    import sys
    import keras, numpy as np
    import keras_icckd  # registers the serialisable classes
    model = keras.saving.load_model(sys.argv[1])
    outputs = model(np.load(sys.argv[2]), training=False)
    np.savez(sys.argv[3], backend=keras.backend.backend(),
             **{k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()})
""")


def outputs_under_other_backend(model_path, images, tmp_path):
    """Loads a saved backbone under the other Keras backend (subprocess) and runs `images`.

    Returns the NpzFile of its named outputs; asserts the subprocess used the other backend.
    """
    other = "jax" if backend() == "tensorflow" else "tensorflow"
    np.save(os.path.join(tmp_path, "images.npy"), images)
    env = dict(os.environ, KERAS_BACKEND=other,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    out = os.path.join(tmp_path, "out.npz")
    subprocess.run([sys.executable, "-c", _OTHER_BACKEND_SCRIPT, model_path,
                    os.path.join(tmp_path, "images.npy"), out],
                   env=env, check=True, capture_output=True, timeout=300)
    result = np.load(out)
    assert str(result["backend"]) == other
    return result


def run_doctests(module):
    """Runs the docstring examples of `module` (with `keras` in scope); fails if none ran or one failed."""
    result = doctest.testmod(module, extraglobs={"keras": keras}, verbose=False,
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no docstring example that ran"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module.__name__} failed"


def torch_conv2d(x, weight, stride, padding, groups=1):
    """PyTorch's Conv2d (NCHW input, OIHW weight, symmetric zero padding, no bias) in NumPy."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_c, in_per_group, kh, kw = weight.shape
    h_out, w_out = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_c, h_out, w_out), "float64")
    for o in range(out_c):
        g = o // (out_c // groups)
        xs = x[:, g * in_per_group:(g + 1) * in_per_group]
        for i in range(h_out):
            for j in range(w_out):
                patch = xs[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, o, i, j] = np.tensordot(patch, weight[o], axes=3)
    return out


def numeric_gradient(fn, x, step=1e-5):
    """Central differences of a float64 function of an array, entry by entry."""
    x, grad = np.float64(x), np.zeros(np.shape(x))
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (fn(up) - fn(down)) / (2 * step)
    return grad


def checkpoint_epoch(path):
    """The epochs completed in a run checkpoint at `path`; 0 when it is missing or unreadable."""
    from keras_icckd import training

    try:
        return training.read_checkpoint(path)[0]["epoch"]
    except training.CheckpointError:
        return 0


def kill_after_first_checkpoint(processes, path, timeout=500):
    """SIGKILLs `processes` (one Popen, or the list of a several-process run: the others would wait
    in a collective for a lost one) as soon as the checkpoint at `path` records an epoch; returns
    that epoch (0: none before a process ended)."""
    processes = processes if isinstance(processes, list) else [processes]
    deadline = time.time() + timeout
    while checkpoint_epoch(path) < 1 and all(p.poll() is None for p in processes) and time.time() < deadline:
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGKILL)
    for p in processes:
        p.communicate()
    return checkpoint_epoch(path)
