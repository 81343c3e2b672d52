#!/usr/bin/env bash
# The GPU benchmarks in one call, under 6 minutes on one GPU: engines (bench/engines.py),
# the round engine (bench/rounds.py: batch vs auto), reasoning trees (bench/trees.py) and the service's submit
# path (bench/submit.py), each bounded by its own time limit, JSON written under $OUT (or
# bench/results/gpu when $OUT is unset): engines.json, rounds.json, trees.json,
# submit.json, summary.json (each step's outcome) and gpu.log (every step's output).
#
#   bash bench/gpu.sh              # on a machine with CUDA
#   bash bench/gpu.sh --dry-run    # the same steps on the CPU with the tiny models (seconds)
#
# Environment: PYTHON (default .venv/bin/python, else python3), TARGET (default smollm2),
# DRAFT (default smollm2: smollm2-int8 is CPU-only, and the draft must share the target's
# tokenizer), DTYPE (default bfloat16 for engines and trees). bench/submit.py needs Redis and
# PostgreSQL (SEEDQ_REDIS_URL, SEEDQ_BENCH_PG_URL); without them that step is recorded as
# skipped. A failing or timed-out step is recorded and the next one still runs. seedq need
# not be pip-installed: the repo root goes on PYTHONPATH. On the GPU machine, a real run
# first sources SEEDQ_ENV (default /tmp/seedq-env.sh, written by bench/device_prep.sh).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SEEDQ_ENV="${SEEDQ_ENV-/tmp/seedq-env.sh}"
if [[ $DRY_RUN == 0 && -n "$SEEDQ_ENV" && -f "$SEEDQ_ENV" ]]; then
  # shellcheck disable=SC1090
  . "$SEEDQ_ENV"  # PYTHONPATH=/tmp/site:$PWD, SEEDQ_CACHE_DIR, PYTHON (device_prep.sh)
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"  # seedq, bench: no install needed
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
  ROUNDS_ARGS=(--target tiny --groups 2 --n 2 --max-new-tokens 8 --reps 1)
  TREES_ARGS=(--limit 1 --tasks gsm8k --breadth 2 --depth 1 --max-new-tokens 8
              --eval-max-new-tokens 4 --engines ar,seed)
  SUBMIT_ARGS=(--lines 200 --repeat 1 --sqlite-only)
  LIMITS=(120 60 120 60 60)
else
  DEVICE=cuda TARGET="${TARGET:-smollm2}" DRAFT="${DRAFT:-smollm2}" DTYPE="${DTYPE:-bfloat16}"
  # sized for ~20 ms per eager forward of the 135M model (launch-bound): engines ~16 runs of
  # 4 x 64 tokens (~75 s), rounds 2 engines x 4 runs of 24 x 64 (~60 s), trees 12 (~70 s)
  ENGINES_ARGS=(--n 4 --max-new-tokens 64 --repeat 1)
  # the round engine: batch vs auto on 8 groups x 3 sequences (24 rows), float32 so that the
  # greedy outputs can be compared token for token
  ROUNDS_ARGS=(--target "$TARGET" --groups 8 --n 3 --max-new-tokens 64 --reps 3
               --dtype float32)
  TREES_ARGS=(--limit 1 --tasks gsm8k,blocksworld --breadth 3 --depth 2 --max-new-tokens 32
              --eval-max-new-tokens 16)
  SUBMIT_ARGS=(--lines 10000 --repeat 3)
  # seconds per step: 360 in all, under 6 minutes with start-up; without Redis and PostgreSQL
  # (the GPU machine has neither) submit is skipped at once and the run ends within 330 s
  LIMITS=(120 90 110 45 30)
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

services_up() {  # at most 15 s, whatever the clients' retries do
  timeout --kill-after=2 15 "$PYTHON" - "$DRY_RUN" <<'PY'
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
step rounds "${LIMITS[1]}" "$PYTHON" bench/rounds.py --device "$DEVICE" \
  --engines batch,auto "${ROUNDS_ARGS[@]}" --out "$DEST/rounds.json"
step trees "${LIMITS[2]}" "$PYTHON" bench/trees.py --target "$TARGET" --draft "$DRAFT" \
  --device "$DEVICE" --dtype "$DTYPE" "${TREES_ARGS[@]}" --out "$DEST/trees.json"
# the CUDA tests: SeeD's streams and the round engine (storage, drafts, verify) on the GPU
step cuda-tests "${LIMITS[3]}" "$PYTHON" -m pytest -q -p no:cacheprovider \
  tests/decoding/test_shared_target.py::test_seed_on_cuda_streams_gives_what_ar_gives \
  tests/decoding/test_auto.py -k cuda
if services_up 2>>"$LOG"; then
  step submit "${LIMITS[4]}" "$PYTHON" bench/submit.py "${SUBMIT_ARGS[@]}" \
    --out "$DEST/submit.json"
else
  STATUS[submit]="skipped: Redis/PostgreSQL unreachable"
  echo "== submit: ${STATUS[submit]}"
fi

"$PYTHON" - "$DEST/summary.json" "$DEVICE" "$TARGET" "$DRAFT" "$DTYPE" "$DRY_RUN" \
  "engines=${STATUS[engines]}" "rounds=${STATUS[rounds]}" "trees=${STATUS[trees]}" \
  "cuda-tests=${STATUS[cuda-tests]}" "submit=${STATUS[submit]}" <<'PY'
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
for name in engines rounds trees; do
  [[ ${STATUS[$name]} == ok ]] || exit 1
done
exit 0
