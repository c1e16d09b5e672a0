#!/usr/bin/env bash
# KD with and without MixUp on the training batches (experiments/results/augment_cifar10.md): a resnet8
# student distilled from the committed CE resnet20 teacher on the bundled CIFAR-10 subset, 10 epochs,
# seeds 0 1 2 (experiments/flags/augment/kd.flags, kd_mixup.flags), then the report.
#
#   bash experiments/augment_cifar10.sh
#
# Finished runs (here or committed under experiments/results/augment_cifar10) are reused and an
# interrupted one resumes: the same command continues after a kill or in a fresh clone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/experiments/ensure_env.sh"
cd "$root"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" TF_CPP_MIN_LOG_LEVEL=2
out="${OUT:-runs/augment_cifar10}"
committed=experiments/results/augment_cifar10
mkdir -p "$out" "$committed"
cp -rn "$committed/." "$out/"
for seed in 0 1 2; do
  .venv/bin/python experiments/sweep.py --flagfiles=experiments/flags/augment/kd.flags,experiments/flags/augment/kd_mixup.flags \
    --seeds="$seed" --output_root="$out" || [[ $? -eq 1 ]]
  for run in "$out"/*_seed"$seed"; do  # each finished run's record, committed beside the report
    [[ -f "$run/metrics.json" ]] && mkdir -p "$committed/$(basename "$run")" \
      && cp "$run/metrics.json" "$committed/$(basename "$run")/metrics.json"
  done
done
.venv/bin/python - "$committed" <<'PY'
import glob, json, os, sys
import numpy as np
committed = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(committed, "*_seed*", "metrics.json"))):
    arm, seed = os.path.basename(os.path.dirname(path)).rsplit("_seed", 1)
    rows.setdefault(arm, {})[int(seed)] = json.load(open(path))
lines = ["| arm | seeds | last-epoch top-1 (%) | best-epoch top-1 (%) | per seed (last) | top-1 agreement with the teacher on the test set, last epoch |",
         "|---|---|---|---|---|---|"]
last = {}
for arm in ("kd", "kd_mixup"):
    runs = rows.get(arm, {})
    if not runs:
        continue
    tops = [runs[s]["test_top1"] for s in sorted(runs)]
    best = [runs[s]["best_test_top1"] for s in sorted(runs)]
    agree = [runs[s]["history"][-1].get("test_agreement", float("nan")) for s in sorted(runs)]
    last[arm] = tops
    std = lambda v: np.std(v, ddof=1) if len(v) > 1 else float("nan")
    lines.append(f"| {arm} | {','.join(map(str, sorted(runs)))} | {np.mean(tops):.2f} +- {std(tops):.2f} | "
                 f"{np.mean(best):.2f} +- {std(best):.2f} | {' / '.join(f'{t:.2f}' for t in tops)} | "
                 f"{np.mean(agree):.3f} |")
if len(last) == 2 and all(len(v) == 3 for v in last.values()):
    d = np.mean(last["kd_mixup"]) - np.mean(last["kd"])
    s = np.mean([np.std(v, ddof=1) for v in last.values()])
    lines.append("")
    lines.append(f"D = {d:+.2f} points (MixUp minus none), s = {s:.2f}: "
                 + ("the difference exceeds the seeds' spread." if abs(d) > s else "the difference does not exceed the seeds' spread."))
text = open("experiments/results/augment_cifar10.md").read()
begin, end = "<!-- table:begin -->", "<!-- table:end -->"
head, rest = text.split(begin)
text = head + begin + "\n" + "\n".join(lines) + "\n" + end + rest.split(end)[1]
open("experiments/results/augment_cifar10.md", "w").write(text)
print("\n".join(lines))
PY
