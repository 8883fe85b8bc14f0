#!/usr/bin/env bash
# Issue 19 on ML-100K: SASRec (id, id+text) and the 8-layer teacher (id, id+text) on test, two training seeds,
# paired over the 943 users. Seed 42 = the demo's committed models (models/sasrec, models/teacher) and the
# validation runs of "Which item side the demo trains with" (runs/ml100k-item-side); seed 43 = the same params
# with train_sasrec.seed / train_llm.seed 43 (the teachers over the demo's seed-42 SASRec table, as in "ML-100K demo
# models, two training seeds"). One torch thread per process; a finished model or score is not redone.
#   bench/ml100k_text.sh train | table
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
O=runs/ml100k-text; S=data/splits; PARTS=$O/parts; RES=bench/results/ml100k_text
SID=bench/params/ml100k_sasrec_id_text.yaml; TID=bench/params/ml100k_teacher_id_text.yaml
mkdir -p $PARTS $O/params $RES
seed43() {  # params file -> the same with both training seeds 43
  python - "$1" "$2" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
for section in ("train_sasrec", "train_llm"):
    p.setdefault(section, {})["seed"] = 43
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
}
score() {  # name dir params
  [ -f $PARTS/$1.pt ] || python bench/eval_parts.py score --params "$3" --splits $S --model "$1=$2" --split test --out $PARTS/$1.pt
}
case "${1:?train | table}" in
  train)
    seed43 params.yaml $O/params/id.s43.yaml; seed43 $SID $O/params/sasrec_text.s43.yaml; seed43 $TID $O/params/teacher_text.s43.yaml
    score sasrec_id.s42 models/sasrec params.yaml
    score sasrec_text.s42 runs/ml100k-item-side/sasrec_id_text $SID
    score teacher_id.s42 models/teacher params.yaml
    score teacher_text.s42 runs/ml100k-item-side/teacher_id_text $TID
    [ -f $O/models/sasrec_id.s43/model.pt ] || slmrec train sasrec --params $O/params/id.s43.yaml --splits $S --out $O/models/sasrec_id.s43 --runs $O/runs
    score sasrec_id.s43 $O/models/sasrec_id.s43 $O/params/id.s43.yaml
    [ -f $O/models/sasrec_text.s43/model.pt ] || slmrec train sasrec --params $O/params/sasrec_text.s43.yaml --splits $S --out $O/models/sasrec_text.s43 --runs $O/runs
    score sasrec_text.s43 $O/models/sasrec_text.s43 $O/params/sasrec_text.s43.yaml
    [ -f $O/models/teacher_text.s43/model.pt ] || slmrec train teacher --params $O/params/teacher_text.s43.yaml --splits $S --sasrec models/sasrec --out $O/models/teacher_text.s43 --runs $O/runs
    score teacher_text.s43 $O/models/teacher_text.s43 $O/params/teacher_text.s43.yaml
    [ -f $O/models/teacher_id.s43/model.pt ] || slmrec train teacher --params $O/params/id.s43.yaml --splits $S --sasrec models/sasrec --out $O/models/teacher_id.s43 --runs $O/runs
    score teacher_id.s43 $O/models/teacher_id.s43 $O/params/id.s43.yaml ;;
  table)
    m() { echo "$1=$PARTS/$1.s42.pt,$PARTS/$1.s43.pt"; }
    python bench/eval_parts.py seeds --params params.yaml \
      --pair "$(m sasrec_text):$(m sasrec_id)" --pair "$(m teacher_text):$(m teacher_id)" \
      --pair "$(m teacher_text):$(m sasrec_id)" --pair "$(m teacher_text):$(m sasrec_text)" \
      --pair "$(m teacher_id):$(m sasrec_id)" | tee $RES/seeds.md ;;
esac
