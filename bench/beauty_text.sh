#!/usr/bin/env bash
# Issue 19 on Amazon Beauty: the text-aware LLM models and the paired ID SASRec, one torch thread per process.
#   bench/beauty_text.sh llm     teacher (id+text) -> distilled student -> student_nokd, each scored on test
#   bench/beauty_text.sh sasrec  the ID SASRec retrained on the same splits (for paired CIs), then both SASRecs scored
#   bench/beauty_text.sh table   one table with paired-bootstrap CIs over the 22,363 users
# Needs runs/beauty-sasrec-text (bench/README.md, "SASRec with the text view on Amazon Beauty"). Resumable:
# every training resumes from runs/beauty-sasrec-text/runs, a finished model or score is not redone.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
O=runs/beauty-sasrec-text; S=$O/splits; R=$O/runs; PARTS=$O/parts
LP=bench/params/beauty_llm_text.yaml; SP=bench/params/beauty_sasrec.yaml
mkdir -p "$PARTS"
score() {  # name dir params
  [ -f "$PARTS/$1.pt" ] || python bench/eval_parts.py score --params "$3" --splits $S --model "$1=$2" --split test --out "$PARTS/$1.pt"
}
train_llm() {  # name role-args...
  local name=$1; shift
  [ -f "$O/models/$name/model.pt" ] || slmrec train "$@" --params $LP --splits $S --sasrec $O/models/sasrec \
    --out "$O/models/$name" --runs $R
}
case "${1:?llm | sasrec | table}" in
  llm)
    train_llm teacher_text teacher
    score teacher_text $O/models/teacher_text $LP
    train_llm student_text student --teacher $O/models/teacher_text
    score student_text $O/models/student_text $LP
    train_llm student_nokd_text student
    score student_nokd_text $O/models/student_nokd_text $LP ;;
  sasrec)
    [ -f $O/models/sasrec_id/model.pt ] || slmrec train sasrec --params $SP --splits $S --out $O/models/sasrec_id --runs $R
    score sasrec_id $O/models/sasrec_id $SP
    score sasrec_text $O/models/sasrec bench/params/beauty_sasrec_text.yaml ;;
  table)
    python bench/eval_parts.py table --params $LP --splits $S --parts "$PARTS"/*.pt \
      --out bench/results/beauty_text_llm/metrics.json --table bench/results/beauty_text_llm/results.md \
      --compare sasrec_text-sasrec_id teacher_text-sasrec_id student_text-sasrec_id student_nokd_text-sasrec_id \
        teacher_text-sasrec_text student_text-sasrec_text student_nokd_text-sasrec_text \
        student_text-teacher_text student_nokd_text-teacher_text student_text-student_nokd_text ;;
esac
