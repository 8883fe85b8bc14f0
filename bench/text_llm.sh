#!/usr/bin/env bash
# Issue 19: the text-aware LLM models on an Amazon dataset and the paired ID SASRec, one torch thread per process.
#   bench/text_llm.sh DS llm     teacher (id+text) -> distilled student -> student_nokd, each scored on test
#   bench/text_llm.sh DS sasrec  the ID SASRec retrained on the same splits (for paired CIs), then both SASRecs scored
#   bench/text_llm.sh DS teacher_id  the ID teacher over the ID SASRec, on the same splits, scored
#   bench/text_llm.sh DS fusion [F..]  the teacher with each other fusion (gated, concat, whiten = whitened sum,
#                                iddrop = sum with llm.item_id_dropout 0.2; on Beauty also, each over iddrop:
#                                count = count-gated fusion, align = llm.item_align infonce, warm = llm.text_warmup
#                                0.25, iddrop05 = item_id_dropout 0.5, align03 = align with weight 0.3,
#                                align03_s43 / align03_s44 = align03 with seeds 43 / 44; default gated concat
#                                whiten), validation only
#   bench/text_llm.sh DS over_id F  the teacher of params ${DS}_llm_F.yaml over the ID SASRec's table (not SASRec
#                                id+text's), validation only (e.g. idcount: count-gated fusion, ID dropout)
#   bench/text_llm.sh DS fusion_test F  the fusion teacher F that validation chose, scored on test
#   bench/text_llm.sh DS long    the teacher (id+text) with 4 epochs (params ${DS}_llm_text_e4.yaml), scored; then
#                                its distilled student and student_nokd with 4 epochs, scored
#   bench/text_llm.sh DS seed    the teacher (id+text) with a second training seed (params ${DS}_llm_text_s43.yaml), scored
#   bench/text_llm.sh DS students F [over_id]  the students of teacher variant F (params ${DS}_llm_F.yaml): student_nokd_F,
#                                then student_F distilled from teacher_F, each scored on test; over_id: over the ID
#                                SASRec's table, as the teacher of `over_id F` was
#   bench/text_llm.sh DS kd F G  student_G distilled from teacher_F with params ${DS}_llm_G.yaml (e.g. iddrop iddrop_kl:
#                                the ID-dropout teacher, logit KD on top), scored on test
#   bench/text_llm.sh DS table   one table with paired-bootstrap CIs over all users (OUT=... TABLE=... to write it
#                                elsewhere: a session's own parts next to the committed table)
# DS = beauty (needs runs/beauty-sasrec-text: bench/README.md, "SASRec with the text view on Amazon Beauty") or
# scientific (runs/sci-sasrec-text and runs/sci-sasrec-id: "SASRec with and without the text view on Amazon Scientific").
# Resumable: every training resumes from $O/runs, a finished model or score is not redone.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
case "${1:?beauty | scientific}" in
  beauty) O=runs/beauty-sasrec-text; SID=$O/models/sasrec_id; PARTS=$O/parts
    OUT=${OUT:-bench/results/beauty_text_llm/metrics.json}; TABLE=${TABLE:-bench/results/beauty_text_llm/results.md} ;;
  scientific) O=runs/sci-sasrec-text; SID=runs/sci-sasrec-id/models/sasrec; PARTS=runs/sci-parts
    OUT=${OUT:-bench/results/scientific_text/llm_metrics.json}; TABLE=${TABLE:-bench/results/scientific_text/llm_results.md} ;;
  *) echo "unknown dataset $1" >&2; exit 2 ;;
esac
ds=$1; shift
S=$O/splits; R=$O/runs
LP=bench/params/${ds}_llm_text.yaml; SP=bench/params/${ds}_sasrec.yaml; [ -f $SP ] || SP=bench/params/${ds}_sasrec_id.yaml
mkdir -p "$PARTS"
score() {  # name dir params
  [ -f "$PARTS/$1.pt" ] || python bench/eval_parts.py score --params "$3" --splits $S --model "$1=$2" --split test --out "$PARTS/$1.pt"
}
train_llm() {  # name sasrec role-args...
  local name=$1 sasrec=$2; shift 2
  [ -f "$O/models/$name/model.pt" ] || slmrec train "$@" --params $LP --splits $S --sasrec "$sasrec" \
    --out "$O/models/$name" --runs $R
}
case "${1:?llm | long | seed | sasrec | teacher_id | fusion | over_id | fusion_test | students | kd | table}" in
  llm)
    train_llm teacher_text $O/models/sasrec teacher
    score teacher_text $O/models/teacher_text $LP
    train_llm student_nokd_text $O/models/sasrec student
    score student_nokd_text $O/models/student_nokd_text $LP
    train_llm student_text $O/models/sasrec student --teacher $O/models/teacher_text
    score student_text $O/models/student_text $LP ;;
  long)  # the 2-epoch teacher's validation was still rising: the same recipe, 4 epochs
    LP=bench/params/${ds}_llm_text_e4.yaml
    train_llm teacher_text_e4 $O/models/sasrec teacher
    score teacher_text_e4 $O/models/teacher_text_e4 $LP
    [ "${2:-}" = teacher ] && exit 0
    train_llm student_nokd_text_e4 $O/models/sasrec student
    score student_nokd_text_e4 $O/models/student_nokd_text_e4 $LP
    train_llm student_text_e4 $O/models/sasrec student --teacher $O/models/teacher_text_e4
    score student_text_e4 $O/models/student_text_e4 $LP ;;
  seed)  # how far a second training seed moves the teacher
    LP=bench/params/${ds}_llm_text_s43.yaml
    train_llm teacher_text_s43 $O/models/sasrec teacher
    score teacher_text_s43 $O/models/teacher_text_s43 $LP ;;
  sasrec)
    [ -f $SID/model.pt ] || slmrec train sasrec --params $SP --splits $S --out $SID --runs $R
    score sasrec_id $SID $SP
    score sasrec_text $O/models/sasrec bench/params/${ds}_sasrec_text.yaml ;;
  teacher_id)  # the LLM side reads the ID SASRec's table only (params: the text file with item_side id)
    [ -f "$O/models/teacher_id/model.pt" ] || slmrec train teacher --params bench/params/${ds}_llm_id.yaml --splits $S \
      --sasrec $SID --out $O/models/teacher_id --runs $R
    score teacher_id $O/models/teacher_id bench/params/${ds}_llm_id.yaml ;;
  fusion)  # validation only: each run prints and keeps its best validation NDCG@10 (train.json); optional list
    for f in ${2:-gated concat whiten}; do
      [ -f "$O/models/teacher_$f/model.pt" ] || slmrec train teacher --params bench/params/${ds}_llm_$f.yaml --splits $S \
        --sasrec $O/models/sasrec --out $O/models/teacher_$f --runs $R
    done ;;
  over_id)  # validation only: a teacher variant whose frozen `id` part is the ID SASRec's table
    for f in ${2:?over_id needs the variant name}; do
      [ -f "$O/models/teacher_$f/model.pt" ] || slmrec train teacher --params bench/params/${ds}_llm_$f.yaml --splits $S \
        --sasrec $SID --out $O/models/teacher_$f --runs $R
    done ;;
  students)  # the students of a teacher variant (its params), each scored
    f=${2:?students needs the variant name}; LP=bench/params/${ds}_llm_$f.yaml
    base=$O/models/sasrec; [ "${3:-}" = over_id ] && base=$SID
    train_llm student_nokd_$f $base student
    score student_nokd_$f $O/models/student_nokd_$f $LP
    train_llm student_$f $base student --teacher $O/models/teacher_$f
    score student_$f $O/models/student_$f $LP ;;
  kd)  # another distillation recipe (its params) from an existing teacher variant
    f=${2:?kd needs the teacher variant}; g=${3:?kd needs the student variant}; LP=bench/params/${ds}_llm_$g.yaml
    train_llm student_$g $O/models/sasrec student --teacher $O/models/teacher_$f
    score student_$g $O/models/student_$g $LP ;;
  fusion_test)  # the fusion validation chose (its params and model as `fusion` made them), scored on test
    f=${2:?fusion_test needs the fusion name}
    score teacher_$f $O/models/teacher_$f bench/params/${ds}_llm_$f.yaml ;;
  table)
    have() { [ -f "$PARTS/$1.pt" ]; }
    pairs=()
    for p in sasrec_text-sasrec_id teacher_id-sasrec_id teacher_text-sasrec_id student_text-sasrec_id \
             student_nokd_text-sasrec_id teacher_text-teacher_id teacher_text-sasrec_text student_text-sasrec_text \
             student_nokd_text-sasrec_text student_text-teacher_text student_nokd_text-teacher_text \
             student_text-student_nokd_text teacher_text_e4-sasrec_id teacher_text_e4-sasrec_text \
             teacher_text_e4-teacher_text student_text_e4-teacher_text_e4 student_nokd_text_e4-teacher_text_e4 \
             student_text_e4-student_nokd_text_e4 student_text_e4-sasrec_id teacher_text_s43-sasrec_id \
             teacher_text_s43-sasrec_text teacher_text_s43-teacher_text teacher_gated-sasrec_id \
             teacher_gated-sasrec_text teacher_gated-teacher_text teacher_iddrop-sasrec_id teacher_iddrop-sasrec_text \
             teacher_iddrop-teacher_text teacher_whiten-sasrec_id teacher_whiten-sasrec_text \
             teacher_iddrop-teacher_whiten teacher_iddrop4-sasrec_id teacher_iddrop4-teacher_iddrop \
             student_iddrop-sasrec_id student_iddrop-sasrec_text student_iddrop-teacher_iddrop \
             student_nokd_iddrop-teacher_iddrop student_iddrop-student_nokd_iddrop teacher_iddrop_s43-sasrec_id \
             teacher_iddrop_s43-teacher_iddrop student_iddrop_s43-sasrec_id student_iddrop_s43-teacher_iddrop_s43 \
             student_iddrop_s43-student_nokd_iddrop_s43 student_nokd_iddrop-sasrec_id student_nokd_iddrop-sasrec_text \
             teacher_iddrop_s43-sasrec_text student_iddrop_s43-sasrec_text student_nokd_iddrop_s43-sasrec_id \
             teacher_count-sasrec_id teacher_count-teacher_iddrop teacher_align-sasrec_id \
             teacher_align-teacher_iddrop teacher_warm-sasrec_id teacher_warm-teacher_iddrop \
             student_iddrop_kl-sasrec_id student_iddrop_kl-student_nokd_iddrop student_iddrop_kl-student_iddrop \
             student_iddrop_kl-teacher_iddrop teacher_idcount-sasrec_id teacher_idcount-teacher_iddrop \
             teacher_idcount-sasrec_text teacher_count-sasrec_text teacher_idcount-teacher_count \
             student_count-sasrec_id student_count-teacher_count student_count-student_nokd_count \
             student_nokd_count-sasrec_id student_idcount-sasrec_id student_idcount-teacher_idcount \
             student_idcount-student_nokd_idcount student_nokd_idcount-sasrec_id \
             teacher_align-sasrec_text teacher_align_s43-sasrec_id teacher_align_s43-teacher_align \
             teacher_align_s43-sasrec_text teacher_align03-sasrec_id teacher_align03-teacher_align \
             teacher_align03-sasrec_text student_align-sasrec_id student_align-sasrec_text student_align-teacher_align \
             student_nokd_align-teacher_align student_align-student_nokd_align student_nokd_align-sasrec_id \
             teacher_align03_s43-sasrec_id teacher_align03_s43-teacher_align03 teacher_align03_s43-sasrec_text \
             teacher_align03_s44-sasrec_id teacher_align03_s44-teacher_align03 teacher_align03_s44-sasrec_text \
             student_align03-sasrec_id student_align03-teacher_align03 student_nokd_align03-teacher_align03 \
             student_align03-student_nokd_align03 student_nokd_align03-sasrec_id sasrec_id_s43-sasrec_id \
             teacher_align03-sasrec_id_s43 sasrec_id_s44-sasrec_id teacher_align03-sasrec_id_s44; do
      have "${p%%-*}" && have "${p#*-}" && pairs+=("$p")
    done
    python bench/eval_parts.py table --params $LP --splits $S --parts "$PARTS"/*.pt \
      --out $OUT --table $TABLE --compare "${pairs[@]}" ;;
esac
