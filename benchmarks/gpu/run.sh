#!/usr/bin/env bash
# The GPU check in one go, for a short lent window (see benchmarks/gpu/README.md):
# install -> pytest -m gpu -> extract -> sgd -> lbfgs -> finetune -> one JSON report.
#
#   bash benchmarks/gpu/run.sh            # on the device machine, from the repository root; <= 8 minutes on an H200
#   bash benchmarks/gpu/run.sh --dry-run  # tiny sizes on the CPU, no install (what the test suite runs)
#
# The report goes to $OUT/gpu-bench.json when $OUT is set, else benchmarks/results/gpu-bench-<time>.json.
# Every stage has its own time limit: it is given its budget and stops its own work in time; `timeout`
# ends it (SIGINT, then SIGKILL) only if it overruns, and the next stage starts regardless.
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's probekit even if the editable install fails
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
PY=${PYTHON:-python}
if [ -n "${OUT:-}" ]; then REPORT="$OUT/gpu-bench.json"; else REPORT="benchmarks/results/gpu-bench-$(date -u +%Y%m%dT%H%M%SZ).json"; fi
PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT
T0=$(date +%s)

# stage NAME LIMIT_S COMMAND...: run it under its limit, log to $PARTS/NAME.log, print one summary line
stage() {
    local name=$1 limit=$2 start rc state line
    shift 2
    start=$(date +%s)
    timeout -s INT -k 15 "$limit" "$@" >"$PARTS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) state=ok ;;
        124|137) state=timeout ;;
        *) state=failed ;;
    esac
    echo "$state $(( $(date +%s) - start )) $limit" >"$PARTS/$name.status"
    line=$(grep -v '^\s*$' "$PARTS/$name.log" | tail -n 1 | cut -c1-400)
    printf '== %-8s %-7s %4ss (limit %ss): %s\n' "$name" "$state" "$(( $(date +%s) - start ))" "$limit" "$line"
    if [ "$state" != ok ]; then tail -n 15 "$PARTS/$name.log" | sed 's/^/   | /'; fi
}

# a bench.py stage, told its budget (its limit less a margin for start-up and writing)
bench() {
    local name=$1 limit=$2
    local dry=()
    if [ $DRY = 1 ]; then dry=(--dry-run); fi
    stage "$name" "$limit" "$PY" benchmarks/gpu/bench.py "$name" "${dry[@]}" --budget $(( limit * 8 / 10 )) --json "$PARTS/$name.json"
}

if [ $DRY = 1 ]; then
    export OMP_NUM_THREADS=1  # a shared CPU: one thread each is steadier and often faster
    echo "install: skipped (dry run)" >"$PARTS/install.log"; echo "skipped 0 0" >"$PARTS/install.status"
    echo "== install  skipped (dry run)"
    # generous limits: the dry run checks that every stage works, not how fast a shared CPU is
    stage pytest 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$PARTS/pytest.xml" tests/gpu
    bench extract 240
    bench sgd 240
    bench lbfgs 240
    bench finetune 240
else
    # already-installed packages make these quick no-ops; a failed install still lets the stages try
    # limits add up to 480 s (8 minutes)
    stage install 60 bash -c "$PY -m pip install -q 'torch==2.14.1' 'torchvision==0.29.1' && $PY -m pip install -q -e '.[test]'"
    stage pytest 170 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$PARTS/pytest.xml"
    bench extract 90
    bench sgd 40
    bench lbfgs 65
    bench finetune 55
fi

dry=()
if [ $DRY = 1 ]; then dry=(--dry-run); fi
"$PY" benchmarks/gpu/bench.py collect "${dry[@]}" --parts "$PARTS" --out "$REPORT"
echo "total $(( $(date +%s) - T0 ))s"
