#!/usr/bin/env bash
# One worker of the selection grid's queue (benchmarks/README.md, "Selection grid"). Start one
# per core, from the repository root:
#
#   for i in 1 2; do nohup bash benchmarks/selection_grid_queue.sh $i >/dev/null 2>&1 & sleep 20; done
#
# Every step resumes: finished units are skipped and a unit another worker holds is left to it,
# so the workers share each step and a killed worker loses at most the batch in flight. The
# steps, in order:
#   1. qwen2.5-0.5b, k = 8, bfloat16, the tasks in the order fixed before its first result;
#   2. its random-init control (seed 1) on amazon, rt-sentiment and r8 (the tasks of
#      smollm2-135m's control), on the demonstrations the trained grid chose
#      (--selections-from);
#   3. smollm2-135m, k = 4 (float32), then its random-init control at k = 4 (as step 2);
#   4. qwen2.5-0.5b, k = 4, float32, then its random-init control at k = 4 (float32).
# Step 1 runs only where bfloat16 matrix products are faster than float32 on this CPU
# (icldistill.models.half_precision_speed > 1.2; CPUs with AVX512-BF16 or AMX): on an AVX2-only
# CPU they are ~8x slower. Step 4 was to run in bfloat16 too, but the three working sessions
# up to 2026-12-04 drew AVX2-only CPUs, so from 2026-12-04 it runs in float32, the reference
# precision, on any CPU: about 1.9x the bfloat16 cost (19 CPU-h instead of 10), one precision
# for the whole block. The reports name each block's precision.
#
# The grid (steps 1, 3, 4) runs from a pinned tree so that every unit is computed by the same
# code: $GRID_TREE (default ../grid-tree), made here when missing as commit 970500e plus
# benchmarks/selection-grid-code.patch. The control (step 2) runs this checkout's code, or
# $CONTROL_TREE's. Logs go to $LOG_DIR (default ../logs). DRY_RUN=1 prints the commands only.
#
#   bash benchmarks/selection_grid_queue.sh report
#
# writes both reports (the control's, then the grid's beside it) from the recorded units with
# this checkout's code; nothing is computed. Run it with the workers stopped or paused.
#
# The whole script is one block that bash reads before it runs any of it, so editing this file
# while workers run does not change what they do (bash otherwise reads a script as it goes).
{
set -euo pipefail

worker=${1:?usage: selection_grid_queue.sh WORKER_NUMBER | report}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
grid_tree=${GRID_TREE:-$root/../grid-tree}
control_tree=${CONTROL_TREE:-$root}
log_dir=${LOG_DIR:-$root/../logs}
python=${PYTHON:-python3}

T=amazon,rt-sentiment,rt-subjectivity,r8,r52,20ng,boolq,openbookqa,commonsenseqa,siqa
S=random,knn,bm25,mmr,dpp,vote-k,mmd,mmd-balanced,mmd-joint,mmd-local,mmd-katt
QT=rt-sentiment,amazon,openbookqa,commonsenseqa,siqa,r52,rt-subjectivity,20ng,r8,boolq
CONTROL_S=random,knn,vote-k,mmd,mmd-balanced,mmd-joint,mmd-local,mmd-katt
CONTROL_T=amazon,rt-sentiment,r8
POSTHOC=(--posthoc vote-k mmd --posthoc vote-k mmd-joint --posthoc vote-k mmd-balanced
         --posthoc mmd-joint mmd)

write_reports() {  # both reports, from the recorded units; nothing is computed; fails
    # (after trying both) if either failed
    local status=0
    for cmd in \
        "--models smollm2-135m,qwen2.5-0.5b --dtype qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32 --tasks $CONTROL_T --selectors $CONTROL_S --ks 4,8 --control 1 --selections-from benchmarks/results/selection-grid --out benchmarks/results/selection-grid-control-1" \
        "--models smollm2-135m,qwen2.5-0.5b --dtype qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32 --tasks $T --selectors $S --ks 4,8 --out benchmarks/results/selection-grid --control-dir benchmarks/results/selection-grid-control-1"; do
        # shellcheck disable=SC2086  # the flags split on spaces
        args=($cmd --seeds 3 --n-test 300 --pool-size 2000 "${POSTHOC[@]}" --report-only)
        if [[ -n "${DRY_RUN:-}" ]]; then
            echo "$python benchmarks/bench_fewshot.py ${args[*]}"
        else
            "$python" benchmarks/bench_fewshot.py "${args[@]}" > /dev/null || status=$?
        fi
    done
    return $status
}

reports_signature() {  # what the reports are written from: both folders' recorded units and
    # this checkout's code
    {
        cat benchmarks/results/selection-grid/results.jsonl \
            benchmarks/results/selection-grid-control-1/results.jsonl 2>/dev/null || true
        git rev-parse HEAD 2>/dev/null || true
        git diff HEAD -- src benchmarks/bench_fewshot.py 2>/dev/null || true
    } | cksum
}

locked_reports() {  # write_reports, one process at a time (workers and the report mode);
    # with "if-changed" (a worker's step) nothing is written when the last complete write in
    # this log folder was from the same units and code (a restarted worker whose blocks are
    # done would otherwise spend 10 minutes per worker rewriting identical reports)
    if [[ -n "${DRY_RUN:-}" ]]; then
        write_reports
        return 0
    fi
    mkdir -p "$log_dir"
    (
        flock 9
        sig=$(reports_signature)
        if [[ "${1:-}" == if-changed && -f "$log_dir/reports.sig" \
              && "$(cat "$log_dir/reports.sig")" == "$sig" ]]; then
            echo "reports: up to date (same units and code as the last write)"
            exit 0
        fi
        rm -f "$log_dir/reports.sig"
        write_reports || exit $?
        echo "$sig" > "$log_dir/reports.sig"
    ) 9> "$log_dir/reports.lock"
}

if [[ "$worker" == report ]]; then
    locked_reports
    exit 0
fi
GRID=(--threads 1 --selectors "$S" --n-test 300 --pool-size 2000
      --out benchmarks/results/selection-grid --report-only-if-done)

run() {  # run LOG_NAME ENV... -- CMD...
    local name=$1
    shift
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "$*"
        return 0
    fi
    mkdir -p "$log_dir"
    echo "$(date -u +%FT%TZ) worker $worker: $name" >> "$log_dir/queue-$worker.log"
    local rc=0
    env OMP_NUM_THREADS=1 "$@" >> "$log_dir/$name-$worker.log" 2>&1 || rc=$?
    # (the status is kept first: $(date ...) in the message would reset $?)
    [[ $rc == 0 ]] || \
        echo "$(date -u +%FT%TZ) worker $worker: $name exited with $rc" >> "$log_dir/queue-$worker.log"
}

reports() {  # a worker's step: both reports over every recorded unit, logged
    if [[ -n "${DRY_RUN:-}" ]]; then
        locked_reports
        return 0
    fi
    echo "$(date -u +%FT%TZ) worker $worker: reports" >> "$log_dir/queue-$worker.log"
    local rc=0
    locked_reports if-changed >> "$log_dir/reports-$worker.log" 2>&1 || rc=$?
    [[ $rc == 0 ]] || \
        echo "$(date -u +%FT%TZ) worker $worker: reports exited with $rc" >> "$log_dir/queue-$worker.log"
}

control() {  # control LOG_NAME FLAGS...: the random-init twin (seed 1) on the trained grid's
    # prompts (--selections-from), with this checkout's code; no report of its own
    local name=$1
    shift
    run "$name" PYTHONPATH="$control_tree/src" nice -n 15 "$python" \
        "$control_tree/benchmarks/bench_fewshot.py" "$@" --tasks "$CONTROL_T" \
        --selectors "$CONTROL_S" --seeds 3 --n-test 300 --pool-size 2000 --threads 1 \
        --control 1 --selections-from benchmarks/results/selection-grid \
        --out benchmarks/results/selection-grid-control-1 --no-report
}

if [[ -z "${DRY_RUN:-}" && ! -d "$grid_tree" ]]; then
    git worktree add --detach "$grid_tree" 970500e
    git -C "$grid_tree" apply "$root/benchmarks/selection-grid-code.patch"
fi
if [[ -n "${DRY_RUN:-}" ]]; then
    bf16=${BF16_FAST:-1}
else
    bf16=$("$python" -c "from icldistill.models import half_precision_speed as h; print(int(h() > 1.2))")
fi
pinned=(PYTHONPATH="$grid_tree/src" nice -n 15 "$python" "$grid_tree/benchmarks/bench_fewshot.py")

if [[ "$bf16" == 1 ]]; then
    run qwen-k8 "${pinned[@]}" --models qwen2.5-0.5b --dtype bfloat16 --tasks "$QT" --ks 8 "${GRID[@]}"
    control qwen-control --models qwen2.5-0.5b --dtype bfloat16 --ks 8
    # the control run's own report would cover its command only (qwen2.5-0.5b) and replace the
    # folder's report, which holds smollm2-135m's control too: both reports are written over
    # every recorded unit instead
    reports
fi
run smollm-k4 "${pinned[@]}" --models smollm2-135m --tasks "$T" --ks 4 "${GRID[@]}"
# the control reads the selections the trained units recorded when they chose their prompts,
# so it can start while the other worker scores the block's last unit
control smollm-control-k4 --models smollm2-135m --ks 4
# the last worker of a block writes a report of that block's command only (the pinned code has
# no --no-report): rewrite both over every recorded unit
reports
# qwen2.5-0.5b at k = 4 in float32 on every CPU (the reference precision; see the header)
run qwen-k4-fp32 "${pinned[@]}" --models qwen2.5-0.5b --tasks "$QT" --ks 4 "${GRID[@]}"
control qwen-control-k4-fp32 --models qwen2.5-0.5b --ks 4
reports
[[ -n "${DRY_RUN:-}" ]] || echo "$(date -u +%FT%TZ) worker $worker: queue done" >> "$log_dir/queue-$worker.log"
exit 0
}
