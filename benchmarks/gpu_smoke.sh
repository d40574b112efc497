#!/usr/bin/env bash
# GPU smoke test: every approach on Fashion-MNIST for one short epoch with 16-bit mixed precision, a 2-process
# DDP SimCLR step with the cross-device gather of negatives, and images/s per method (each run's metrics.json).
# Under 10 minutes on one recent GPU. Run it whenever a GPU machine is at hand; record its table in BENCHMARKS.md.
#
#   bash benchmarks/gpu_smoke.sh [--out DIR]          # default: a new temporary folder (printed)
#
# Everything is written under the output folder, the feature cache included. Settings (environment):
#   FEWLABEL_DATA       where fashion-mnist/ lives (default ../shared/data)
#   SMOKE_ACCELERATOR   gpu (default) or cpu: a CPU dry run that checks every command line
#   SMOKE_PRECISION     default 16-mixed (32-true when SMOKE_ACCELERATOR=cpu: fp16 autocast needs a GPU)
#   SMOKE_DATA          default fashion-mnist (digits makes a CPU dry run take a minute or two)
#   SMOKE_LABELS        labelled share for train / finetune / evaluate (default 0.1)
#   SMOKE_MAX_MINUTES   wall-clock cap per run (default 2; e.g. 0.1 for a dry run)
#   PYTHON              the interpreter with fewlabel installed (default python)
#
# The DDP step needs two GPUs for `--devices 2`. With fewer, it runs the same two-process SimCLR step on the CPU
# (`--accelerator cpu --devices 2`, gloo, on the embedded digits): the gather of negatives across processes is
# the same code on either backend, only the GPU-to-GPU transport is left unchecked (the script says so).
set -euo pipefail

OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_smoke.sh: unknown argument $1 (only --out DIR)" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/fewlabel-gpu-smoke.XXXXXX")"
elif [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    echo "gpu_smoke.sh: $OUT exists and is not empty; choose another --out" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

PYTHON="${PYTHON:-python}"
DATA_DIR="${FEWLABEL_DATA:-../shared/data}"
if [ -d "$DATA_DIR" ]; then DATA_DIR="$(cd "$DATA_DIR" && pwd)"; fi
ACCEL="${SMOKE_ACCELERATOR:-gpu}"
if [ "$ACCEL" = cpu ]; then PRECISION="${SMOKE_PRECISION:-32-true}"; else PRECISION="${SMOKE_PRECISION:-16-mixed}"; fi
DATA="${SMOKE_DATA:-fashion-mnist}"
LABELS="${SMOKE_LABELS:-0.1}"
MAX_MINUTES="${SMOKE_MAX_MINUTES:-2}"
export FEWLABEL_CACHE="$OUT/cache"  # fresh: feature extraction is timed, not read from an earlier cache
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

fewlabel() { "$PYTHON" -m fewlabel.cli -q "$@"; }
COMMON=(--data "$DATA" --data-dir "$DATA_DIR" --accelerator "$ACCEL" --devices 1 --precision "$PRECISION"
        --max-minutes "$MAX_MINUTES")
STARTED=$SECONDS
step() {  # step NAME COMMAND...: run one command, log its output, time it
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name"
    if ! "$@" >"$OUT/logs/$name.log" 2>&1; then
        echo "gpu_smoke.sh: step $name failed; its output ($OUT/logs/$name.log) ends with:" >&2
        tail -n 30 "$OUT/logs/$name.log" >&2
        exit 1
    fi
    echo "   $((SECONDS - t0)) s  ($(tail -n 1 "$OUT/logs/$name.log"))"
}
mkdir -p "$OUT/logs"
cd "$OUT"  # a run folder made anywhere but --out (a stray runs/) would show up here

echo "fewlabel GPU smoke: $DATA, labels $LABELS, accelerator $ACCEL, precision $PRECISION, output $OUT"
"$PYTHON" - <<'PY'
import torch, fewlabel
print(f"fewlabel {fewlabel.__version__}, torch {torch.__version__}, CUDA devices: {torch.cuda.device_count()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PY

for policy in standard randaugment; do
    step "train-$policy" fewlabel train "${COMMON[@]}" --labels "$LABELS" --augment "$policy" --epochs 1 \
        --out "$OUT/train-$policy"
done
for strategy in feature-extract finetune; do
    step "finetune-$strategy" fewlabel finetune "${COMMON[@]}" --labels "$LABELS" --backbone efficientnet_lite0 \
        --strategy "$strategy" --epochs 1 --out "$OUT/finetune-$strategy"
done
for method in simclr moco byol dino; do
    step "pretrain-$method" fewlabel pretrain "${COMMON[@]}" --method "$method" --epochs 1 --out "$OUT/pretrain-$method"
done
step "evaluate-knn" fewlabel evaluate --backbone "$OUT/pretrain-simclr" --protocol knn --labels "$LABELS" \
    --data-dir "$DATA_DIR" --accelerator "$ACCEL" --json "$OUT/evaluate-knn.json"

# Two processes, one SimCLR run: negatives gathered from both (gather_distributed), one run folder.
GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$ACCEL" != cpu ] && [ "$GPUS" -ge 2 ]; then
    DDP_NAME="ddp-simclr-2gpu"
    step "$DDP_NAME" fewlabel pretrain --method simclr --data "$DATA" --data-dir "$DATA_DIR" --accelerator "$ACCEL" \
        --devices 2 --precision "$PRECISION" --max-minutes "$MAX_MINUTES" --epochs 1 \
        --option gather_distributed=true --out "$OUT/$DDP_NAME"
else
    DDP_NAME="ddp-simclr-2cpu"
    echo "== 2-process DDP: $GPUS GPU(s) here, --devices 2 needs two; running the two-process SimCLR step on the CPU"
    echo "   (gloo, digits): the cross-process gather of negatives is checked, the GPU-to-GPU transport is not"
    step "$DDP_NAME" fewlabel pretrain --method simclr --data digits --accelerator cpu --devices 2 --epochs 1 \
        --width 8 --workers 0 --max-minutes "$MAX_MINUTES" --option gather_distributed=true --out "$OUT/$DDP_NAME"
fi
if [ -e "$OUT/runs" ] || [ ! -f "$OUT/$DDP_NAME/metrics.json" ]; then
    echo "gpu_smoke.sh: the DDP run did not leave exactly one complete run folder ($OUT/$DDP_NAME)" >&2
    exit 1
fi

"$PYTHON" - "$OUT" "$((SECONDS - STARTED))" <<'PY'
import json, sys
from pathlib import Path

out, total = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for folder in sorted(p for p in out.iterdir() if (p / "metrics.json").is_file()):
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    seconds = m.get("train_seconds", m.get("pretrain_seconds"))
    rows.append((folder.name, m.get("samples_per_second"), seconds, m.get("test_accuracy"), m.get("device", "")))
knn = out / "evaluate-knn.json"
if knn.is_file():
    m = json.loads(knn.read_text(encoding="utf-8"))
    rate = (m["labelled"] + m["test"]) / m["seconds"] if m.get("seconds") else None  # features of both sets
    rows.append(("evaluate-knn", rate, m.get("seconds"), m.get("test_accuracy"), ""))


def cell(value, width, digits):
    return "-".rjust(width) if value is None else f"{value:{width}.{digits}f}"


print(f"\n{'run':<26} {'images/s':>9} {'seconds':>8} {'test acc':>8}  device")
for name, rate, seconds, acc, device in rows:
    print(f"{name:<26} {cell(rate, 9, 0)} {cell(seconds, 8, 1)} {cell(acc, 8, 4)}  {device}")
print(f"\ntotal {total} s{' (over the 10-minute target)' if total > 600 else ''}; runs and logs in {out}")
PY
