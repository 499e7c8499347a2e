#!/usr/bin/env bash
# The fair rank x target study on SmolLM2-135M-Instruct x E2E (CPU budget), in resumable parts.
#
#   bash experiments/study_fair_smollm2.sh rank1     # seed 0: 4 target sets x 5 ranks x 3 lrs
#   bash experiments/study_fair_smollm2.sh full1     # seed 0: full fine-tuning x 4 lrs
#   bash experiments/study_fair_smollm2.sh matched1  # seed 0: 2 matched-budget cells x 3 lrs
#   bash experiments/study_fair_smollm2.sh widen1    # seed 0: each edge pick's cell, one lr past it
#   bash experiments/study_fair_smollm2.sh rank2 | full2 | matched2   # seeds 1, 2 at each pick
#   bash experiments/study_fair_smollm2.sh report    # the tables, experiments/results/...
#
# Each part is one Hydra multirun under $STUDY (default experiments/results/study_fair_smollm2/
# records, committed without checkpoints: the records the report reads); rerunning a part
# resumes it (trainer.resume=true: finished jobs are kept, the others restart from their newest
# checkpoint, or from scratch on a fresh clone). Each cell's lr is chosen on seed 0's validation loss (a seeded held-out slice of
# the training file, never the test set); seeds 1 and 2 then run at that lr only (the *2 parts;
# `report --select-seeds 0` picks on seed 0 the same way). Budget: 80 AdamW steps of batch 4
# (320 of the training pairs), sequences cut at 64 tokens, each step packed in one row
# (data.packing, data.pack=step: the same losses as padded rows, ~1.6x the tokens/s), lr warmed
# up over 8 steps then decayed linearly, α = 16 at every rank (scale α/r), kaiming init;
# validation loss on 256 held-out pairs; test: the first 100 of the 630 distinct test MRs,
# greedy decoding of at most 40 new tokens. The matched-budget cell MLP r=8 is the rank part's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-experiments/results/study_fair_smollm2/records}
export LORA_JAX_SMOLLM2_GGUF=${LORA_JAX_SMOLLM2_GGUF:-$(../shared/bin/get-smollm2)}
export LORA_JAX_E2E_DIR=${LORA_JAX_E2E_DIR:-../shared/data/e2e}

COMMON=(experiment=e2e_offline_smollm2 sweep_name=study_fair
  trainer.batch_size=4 trainer.max_steps=80 trainer.log_every=10 trainer.eval_before=false
  trainer.progress=false trainer.ckpt_every=40 trainer.resume=true trainer.val_examples=256
  optim.warmup_steps=8 task.max_len=64 task.max_eval_items=100 task.decode.num_beams=1
  task.decode.max_new_tokens=40 task.decode.batch_size=50 data.packing=true data.pack=step)
LORA=(lora.alpha=16 lora.init=kaiming)
# The grids: a first pack at batch 8 picked 3e-3 (the top of 3e-4..3e-3) for q,v r=1, so the
# LoRA grid starts at 1e-3; full fine-tuning's is 10x lower ("LoRA Without Regret": the best
# LoRA lr is about 10x full fine-tuning's).
# Full fine-tuning's seed-0 part picked 3e-4, the top of 3e-5..3e-4 (validation loss 1.656, 1.466,
# 1.429), so 1e-3 was appended: rerunning full1 keeps jobs 0-2 and adds job 3.
LORA_LRS=1e-3,3e-3,1e-2
# One widening round (widen1, after rank1 and matched1, before the *2 parts): every LoRA cell
# whose seed-0 pick is an end of its grid runs once more, at the next half-decade lr past that
# end (1e-2 -> 3e-2; 1e-3 -> 3e-4), in <part>/p1w; the *2 parts pick among p1 and p1w together.
# (q,v at r = 64 picked 1e-2: α is fixed at 16, so its scale α/r is 1/8 of r = 8's.) A pick
# still on the widened edge is flagged by the report, not widened again.
FULL_LRS=3e-5,1e-4,3e-4,1e-3
# 3 adapters per pack: a pack of 4 held 20 GiB of host memory (the process keeps its peak: the
# malloc policy, README "Speed and memory levers"), a pack of 8 swapped on this 24 GiB, 2-core
# machine. Each pack trains its jobs in one compiled step.
PACK=(hydra/launcher=packed hydra.launcher.pack_size=3)
# One matched budget (the CPU budget allows one): MLP-only at r=8 (the rank part's cell, 50.7k
# trainable parameters per layer) against all attention at r=13 and all linear at r=5 (within
# 1.6%). Inside the rank part, q,v at r=8 and all attention at r=4 match exactly (15.4k per layer).
MATCHED=matched/attn_r13,matched/all_r5

# phase 2: one config per cell of a phase-1 part, at its pick (experiments/study_cells.py)
cells() { $PY experiments/study_cells.py "$STUDY" "$@"; }
# a part's seed-0 runs: p1, and p1w when widen1 ran
seed0() { echo "$1/p1"; if [ -d "$STUDY/$1/p1w" ]; then echo "$1/p1w"; fi; }
SEARCH="hydra.searchpath=[file://$PWD/$STUDY/conf]"

part=${1:?give a part: rank1 full1 matched1 widen1 rank2 full2 matched2 report}
case $part in
rank1)
  $PY -m lora_jax.train -m "${COMMON[@]}" "${PACK[@]}" "${LORA[@]}" lora=qv,attn,mlp,all \
    lora.r=1,2,4,8,64 optim.lr=$LORA_LRS seed=0 hydra.sweep.dir=$STUDY/rank/p1 ;;
full1)
  $PY -m lora_jax.train -m "${COMMON[@]}" method=full optim.lr=$FULL_LRS seed=0 \
    hydra.sweep.dir=$STUDY/full/p1 ;;
matched1)
  $PY -m lora_jax.train -m "${COMMON[@]}" "${PACK[@]}" "${LORA[@]}" lora=$MATCHED \
    optim.lr=$LORA_LRS seed=0 hydra.sweep.dir=$STUDY/matched/p1 ;;
widen1)
  for what in rank matched; do
    names=$(cells --widen $what/p1)
    if [ -z "$names" ]; then echo "$what: every seed-0 pick is interior"; continue; fi
    $PY -m lora_jax.train -m "${COMMON[@]}" "${PACK[@]}" "${LORA[@]}" "$SEARCH" \
      "+study_cell=$names" seed=0 hydra.sweep.dir=$STUDY/$what/p1w
  done ;;
rank2 | matched2)
  what=${part%2}
  # shellcheck disable=SC2046  # one part name per word
  names=$(cells $(seed0 $what))  # an assignment: set -e stops here when it fails
  $PY -m lora_jax.train -m "${COMMON[@]}" "${PACK[@]}" "${LORA[@]}" "$SEARCH" \
    "+study_cell=$names" seed=1,2 hydra.sweep.dir=$STUDY/$what/p2 ;;
full2)
  names=$(cells full/p1)
  $PY -m lora_jax.train -m "${COMMON[@]}" method=full "$SEARCH" "+study_cell=$names" \
    seed=1,2 hydra.sweep.dir=$STUDY/full/p2 ;;
report)
  OUT=experiments/results/study_fair_smollm2
  SEL=(--select-by val_loss --select-seeds 0)
  $PY -m lora_jax.report $STUDY/rank $STUDY/full "${SEL[@]}" --out $OUT
  $PY -m lora_jax.report $STUDY/rank $STUDY/full "${SEL[@]}" --metric rouge_l \
    --out $OUT/rouge_l --no-plots
  $PY -m lora_jax.report $STUDY/rank $STUDY/matched "${SEL[@]}" --match-params \
    --match-tol 0.02 --out $OUT/matched
  # validation loss at each pick: seed 0's chose the lr (optimistic), seeds 1 and 2 are fresh
  $PY -m lora_jax.report $STUDY/rank $STUDY/full "${SEL[@]}" --metric validation.loss \
    --out $OUT/val_loss --no-plots
  $PY -m lora_jax.report $STUDY/rank $STUDY/matched "${SEL[@]}" --metric validation.loss \
    --match-params --match-tol 0.02 --out $OUT/matched/val_loss
  # paired tests over the test items and the 3 seeds, each cell at its seed-0 pick (the picks
  # the lr section of report.md lists): the matched budgets, and q,v r=8 against full FT
  PAIRS=("targets=gate,up,down r=8 lr=3e-3|targets=q,k,v,o r=13 lr=3e-3"
    "targets=q,k,v,o,gate,up,down r=5 lr=1e-3|targets=q,k,v,o r=13 lr=3e-3"
    "targets=gate,up,down r=8 lr=3e-3|targets=q,k,v,o,gate,up,down r=5 lr=1e-3"
    "targets=q,v r=8 lr=3e-3|targets=q,k,v,o r=4 lr=3e-3"
    "targets=q,v r=8 lr=3e-3|method=full lr=3e-4")
  # validation loss has no test items: paired t over the 3 seeds (each seed's cells share its
  # validation slice); also r=1 against r=64 in each target set, and all linear against MLP only
  # and against full fine-tuning at r=8
  VPAIRS=("${PAIRS[@]}"
    "targets=q,v r=1 lr=3e-3|targets=q,v r=64 lr=1e-2"
    "targets=q,k,v,o r=1 lr=3e-3|targets=q,k,v,o r=64 lr=3e-3"
    "targets=gate,up,down r=1 lr=3e-3|targets=gate,up,down r=64 lr=3e-3"
    "targets=q,k,v,o,gate,up,down r=1 lr=3e-3|targets=q,k,v,o,gate,up,down r=64 lr=3e-3"
    "targets=q,k,v,o,gate,up,down r=8 lr=3e-3|targets=gate,up,down r=8 lr=3e-3"
    "targets=q,k,v,o,gate,up,down r=8 lr=3e-3|method=full lr=3e-4")
  { echo "# Paired tests (experiments/study_fair_smollm2.sh report)"; echo
    for pair in "${PAIRS[@]}"; do for metric in bleu rouge_l; do
      $PY -m lora_jax.report $STUDY/rank $STUDY/matched $STUDY/full --compare "${pair%|*}" \
        "${pair#*|}" --metric $metric; echo
    done; done
    for pair in "${VPAIRS[@]}"; do
      $PY -m lora_jax.report $STUDY/rank $STUDY/matched $STUDY/full --compare "${pair%|*}" \
        "${pair#*|}" --metric validation.loss; echo
    done; } > $OUT/compare.md ;;
*)
  echo "unknown part $part (rank1 full1 matched1 widen1 rank2 full2 matched2 report)" >&2; exit 2 ;;
esac
