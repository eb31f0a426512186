#!/usr/bin/env bash
# The debate-training study in one command (docs/study.md):
#   1. SFT the debater (human debates, or the synthetic reference debates on the embedded default)
#   2. best-of-N self-play tournament -> preference pairs
#   3. DPO from the previous checkpoint on those pairs
#   4. 2-3 repeated K times (iterative DPO)
#   5. evaluation tournament: base, SFT, DPO-1..K in debate, consultancy and blind formats,
#      held-out questions, both side orders (+ a probe judge's rejudge, if one is configured)
#   6. the study report: OUTDIR/report.md, metrics.json, PNGs
#
#   bash scripts/debate_training.sh OUTDIR [--size tiny|small|paper] [--config FILE]
#
# Resumable: rerun the same command. A finished stage (OUTDIR/<stage>/done) is skipped; a killed
# one reruns its command, which resumes itself (tournament --resume, fit --ckpt_path last).
# Each stage's exact command is in OUTDIR/<stage>/command.sh beside its config and results, and
# OUTDIR/stages.log records every start, finish and skip. PYTHON=... picks the interpreter.
set -euo pipefail

usage() { echo "usage: bash scripts/debate_training.sh OUTDIR [--size tiny|small|paper] [--config FILE]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
OUT=$1; shift
SIZE=tiny; CONFIG=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) [[ $# -ge 2 ]] || usage; SIZE=$2; shift 2 ;;
    --config) [[ $# -ge 2 ]] || usage; CONFIG=(--config "$(realpath -- "$2")"); shift 2 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
mkdir -p -- "$OUT"
OUT=$(cd -- "$OUT" && pwd)
DL=("$PYTHON" -m debate_lightning)

log() { echo "$(date -u +%FT%TZ) $*" >> "$OUT/stages.log"; echo "[study] $*" >&2; }

# stage NAME COMMAND...: skip NAME if it finished; else write COMMAND to OUTDIR/NAME/command.sh,
# run it, and mark NAME done only when it succeeded.
stage() {
  local name=$1; shift
  local dir=$OUT/$name
  if [[ -f $dir/done ]]; then log "skip $name (done)"; return 0; fi
  mkdir -p -- "$dir"
  { echo '#!/usr/bin/env bash'
    echo "# stage $name of the study in $OUT (scripts/debate_training.sh); rerun by hand with: bash $dir/command.sh"
    echo 'set -euo pipefail'
    echo "export HF_HUB_OFFLINE=$HF_HUB_OFFLINE WANDB_MODE=$WANDB_MODE TOKENIZERS_PARALLELISM=$TOKENIZERS_PARALLELISM"
    printf '%q ' "$@"; echo
  } > "$dir/command.sh"
  log "start $name"
  local t0=$SECONDS
  "$@"
  touch "$dir/done"
  log "done $name ($((SECONDS - t0)) s)"
}

# 0. Every stage's config, resolved from configs/study/$SIZE.yaml (+ --config) and checked now.
"${DL[@]}" study plan "$OUT" --size "$SIZE" "${CONFIG[@]}"
K=$("${DL[@]}" study get "$OUT" dpo_rounds)
PROBE=$("${DL[@]}" study get "$OUT" probe)
log "study $OUT: size $SIZE, K=$K"

# 1. SFT.
stage sft "${DL[@]}" fit --config "$OUT/sft/fit.yaml" --ckpt_path last

for k in $(seq 1 "$K"); do
  # 2. Best-of-N self-play of the latest checkpoint; the judge's scores make preferences.jsonl.
  stage "selfplay_$k" "${DL[@]}" tournament --config "$OUT/selfplay_$k/tournament.yaml" --resume --progress false --report false
  if [[ ! -s $OUT/selfplay_$k/preferences.jsonl ]]; then
    echo "error: $OUT/selfplay_$k/preferences.jsonl holds no preference pairs (every best-of-N candidate scored the same?);" \
         "raise selfplay.data.limit or selfplay.debater.best_of_n, or lower selfplay.preferences.min_margin, in a new OUTDIR" >&2
    exit 1
  fi
  # 3. DPO on those pairs, from the latest checkpoint.
  stage "dpo_$k" "${DL[@]}" fit --config "$OUT/dpo_$k/fit.yaml" --ckpt_path last
done

# 5. The evaluation tournament of every checkpoint (and its own tournament report in eval/).
stage eval "${DL[@]}" tournament --config "$OUT/eval/tournament.yaml" --resume --progress false
if [[ -n $PROBE ]]; then
  stage eval_probe "${DL[@]}" rejudge "$OUT/eval" --config "$OUT/eval_probe/judge.yaml" --resume --progress false --report false
fi

# 6. The study report.
stage report "${DL[@]}" study report "$OUT"
log "finished: $OUT/report.md"
