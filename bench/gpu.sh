#!/usr/bin/env bash
# The GPU benchmarks in one call, under 8 minutes on one GPU: engines (bench/engines.py),
# precision (bench/precision.py), reasoning trees (bench/trees.py) and the service's submit
# path (bench/submit.py), each bounded by its own time limit, JSON written under $OUT (or
# bench/results/gpu when $OUT is unset): engines.json, precision.json, trees.json,
# submit.json, summary.json (each step's outcome) and gpu.log (every step's output).
#
#   bash bench/gpu.sh              # on a machine with CUDA
#   bash bench/gpu.sh --dry-run    # the same steps on the CPU with the tiny models (seconds)
#
# Environment: PYTHON (default .venv/bin/python, else python3), TARGET (default smollm2),
# DRAFT (default smollm2: smollm2-int8 is CPU-only, and the draft must share the target's
# tokenizer), DTYPE (default bfloat16 for engines and trees). bench/submit.py needs Redis and
# PostgreSQL (SEEDQ_REDIS_URL, SEEDQ_BENCH_PG_URL); without them that step is recorded as
# skipped. A failing or timed-out step is recorded and the next one still runs.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEST="${OUT:-$ROOT/bench/results/gpu}"
if [[ $DRY_RUN == 1 && -z "${OUT:-}" ]]; then DEST="$ROOT/bench/results/gpu-dry-run"; fi
mkdir -p "$DEST"
LOG="$DEST/gpu.log"
: >"$LOG"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

if [[ $DRY_RUN == 1 ]]; then
  DEVICE=cpu TARGET=tiny DRAFT=tiny-draft DTYPE=float32
  ENGINES_ARGS=(--n 2 --max-new-tokens 8 --no-hf)
  PRECISION_ARGS=(--n 2 --max-new-tokens 8 --dtypes float32)
  TREES_ARGS=(--limit 1 --tasks gsm8k --breadth 2 --depth 1 --max-new-tokens 8
              --eval-max-new-tokens 4 --engines ar,seed)
  SUBMIT_ARGS=(--lines 200 --repeat 1 --sqlite-only)
  LIMITS=(120 60 120 60)
else
  DEVICE=cuda TARGET="${TARGET:-smollm2}" DRAFT="${DRAFT:-smollm2}" DTYPE="${DTYPE:-bfloat16}"
  ENGINES_ARGS=(--n 4 --max-new-tokens 64 --repeat 2)
  PRECISION_ARGS=(--n 8 --max-new-tokens 64 --dtypes float32,bfloat16,float16)
  TREES_ARGS=(--limit 1 --tasks gsm8k,blocksworld --breadth 3 --depth 2 --max-new-tokens 32
              --eval-max-new-tokens 16)
  SUBMIT_ARGS=(--lines 10000 --repeat 3)
  LIMITS=(120 100 180 40)  # seconds per step: 440 in all, under 8 minutes with start-up
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "no CUDA device (use --dry-run on a CPU)" >&2; exit 1; }
fi

declare -A STATUS
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it with a time limit, log it, keep going
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  local began=$SECONDS
  echo "== $name: $*" >>"$LOG"
  local mark
  mark=$(wc -l <"$LOG")
  timeout --signal=TERM --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  case $rc in
    0) STATUS[$name]="ok" ;;
    124|137) STATUS[$name]="timed out after ${limit}s" ;;
    *) STATUS[$name]="failed (exit $rc)" ;;
  esac
  echo "   ${STATUS[$name]} in $((SECONDS - began))s"
  tail -n +"$((mark + 1))" "$LOG" | tail -n 25
}

services_up() {
  "$PYTHON" - "$DRY_RUN" <<'PY'
import os, sys
import redis
import sqlalchemy as sa
try:
    redis.Redis.from_url(os.environ.get("SEEDQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
                         socket_connect_timeout=2).ping()
    if sys.argv[1] != "1":  # the dry run only needs Redis (--sqlite-only)
        url = os.environ.get("SEEDQ_BENCH_PG_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")
        with sa.create_engine(url, connect_args={"connect_timeout": 2}).connect() as c:
            c.exec_driver_sql("SELECT 1")
except Exception as exc:
    print(f"services unavailable: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

step engines "${LIMITS[0]}" "$PYTHON" bench/engines.py --target "$TARGET" \
  --drafts "$DRAFT,ngram" --device "$DEVICE" --dtype "$DTYPE" "${ENGINES_ARGS[@]}" \
  --out "$DEST/engines.json"
step precision "${LIMITS[1]}" "$PYTHON" bench/precision.py --target "$TARGET" \
  --draft "$DRAFT" --device "$DEVICE" "${PRECISION_ARGS[@]}" --out "$DEST/precision.json"
step trees "${LIMITS[2]}" "$PYTHON" bench/trees.py --target "$TARGET" --draft "$DRAFT" \
  --device "$DEVICE" --dtype "$DTYPE" "${TREES_ARGS[@]}" --out "$DEST/trees.json"
if services_up 2>>"$LOG"; then
  step submit "${LIMITS[3]}" "$PYTHON" bench/submit.py "${SUBMIT_ARGS[@]}" \
    --out "$DEST/submit.json"
else
  STATUS[submit]="skipped: Redis/PostgreSQL unreachable"
  echo "== submit: ${STATUS[submit]}"
fi

"$PYTHON" - "$DEST/summary.json" "$DEVICE" "$TARGET" "$DRAFT" "$DTYPE" "$DRY_RUN" \
  "engines=${STATUS[engines]}" "precision=${STATUS[precision]}" "trees=${STATUS[trees]}" \
  "submit=${STATUS[submit]}" <<'PY'
import json, platform, sys, time
import torch
path, device, target, draft, dtype, dry = sys.argv[1:7]
steps = dict(arg.split("=", 1) for arg in sys.argv[7:])
summary = {
    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "dry_run": dry == "1",
    "device": device, "target": target, "draft": draft, "dtype": dtype, "steps": steps,
    "machine": {"python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
}
with open(path, "w", encoding="utf-8") as handle:
    json.dump(summary, handle, indent=2)
print(json.dumps(steps, indent=2))
PY
for name in engines precision trees; do
  [[ ${STATUS[$name]} == ok ]] || exit 1
done
exit 0
