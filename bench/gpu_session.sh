#!/usr/bin/env bash
# One GPU session in one command (BUILD.md, "GPU session"): training-step throughput of Keras on JAX
# (float32, bfloat16) against PyTorch, input-pipeline images/s, a short real-data run, and the
# projected time of the 240-epoch CIFAR-100 KD run; gpu_session.json and gpu_session.md (tables) into --out_dir.
#
#   bash bench/gpu_session.sh [--tiny] [--out_dir=DIR] [--budget_s=480]
#
# Keras needs no TensorFlow here (the JAX backend, the NumPy input pipeline). When `import keras`
# fails and wheels lie in .whl/ (a copy of ../shared/gpu-wheels), they are installed into .site/
# first. --tiny runs everything at toy sizes, on any machine (tests/test_gpu_session.py).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
start=$(date +%s)
if ! "$python" -c "import keras" >/dev/null 2>&1; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "keras cannot be imported and .whl/ holds no wheels: copy ../shared/gpu-wheels to .whl (BUILD.md)" >&2
    exit 1
  fi
  # keras and what it needs there (namex, optree); grain is not used.
  wheels=$(ls .whl/*.whl | grep -v -e '/grain-' -e '/array_record-' -e '/portpicker-')
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$root/.site" \
    $wheels || exit 1
  export PYTHONPATH="$root/.site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# JAX and PyTorch share the GPU during the benchmark: JAX allocates as it goes instead of taking 75 %.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$python" bench/gpu_session.py --setup_s=$(( $(date +%s) - start )) "$@"
