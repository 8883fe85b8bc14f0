#!/usr/bin/env bash
# Issue 19 cold-item study on Amazon (bench/README.md "Cold items on Amazon"), one process, one torch thread:
#   bench/cold_amazon.sh sci      Scientific: splits of runs/sci-sasrec-text (bench/README.md, Scientific)
#   bench/cold_amazon.sh beauty   Beauty: splits of runs/beauty-sasrec-text
# A seeded 10 % of the items leaves every training sequence (slmrec cold-split), the item text table is encoded
# for the cold split, SASRec is trained with each item side (text, id+text, id), cold-eval writes the table.
# Resumable: a finished model is not retrained, an interrupted one resumes from runs/cold-<ds>/runs.
# Two processes can share the sides (SIDES="id_text id" bench/cold_amazon.sh beauty beside the default order): each
# side is trained by the process that claims it, and the one that finishes the last side writes the table.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ds=${1:?sci | beauty}
case $ds in sci) SRC=runs/sci-sasrec-text ;; beauty) SRC=runs/beauty-sasrec-text ;; *) echo "unknown $ds" >&2; exit 2 ;; esac
C=runs/cold-$ds; P=bench/params/cold_${ds}
[ -f $C/splits/cold_items.json ] || slmrec cold-split --splits $SRC/splits --out $C/splits --share 0.1 --seed 2025
slmrec item-text --params ${P}_text.yaml --splits $C/splits --interactions $SRC/interactions --out $C/item_text --report $C/item_text.json
claim() {  # one process per side: a lock dir holding the owner's pid; a dead owner's lock is taken over
  local lock=$C/runs/sasrec_$1.lock
  mkdir -p $C/runs
  if mkdir "$lock" 2>/dev/null; then echo $$ > "$lock/pid"; return 0; fi
  local owner; owner=$(cat "$lock/pid" 2>/dev/null || true)
  if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then echo "sasrec_$1: trained by process $owner"; return 1; fi
  echo $$ > "$lock/pid"; return 0
}
for side in ${SIDES:-text id_text id}; do
  [ -f $C/models/sasrec_$side/model.pt ] && continue
  claim $side || continue
  slmrec train sasrec --params ${P}_$side.yaml --splits $C/splits --out $C/models/sasrec_$side --runs $C/runs
  rm -r $C/runs/sasrec_$side.lock
done
for side in text id_text id; do
  [ -f $C/models/sasrec_$side/model.pt ] || { echo "sasrec_$side not trained yet: cold-eval left to the process that finishes it"; exit 0; }
done
mkdir -p bench/results/cold_$ds
slmrec cold-eval --params ${P}_id.yaml --splits $C/splits --model sasrec_id=$C/models/sasrec_id \
  --model sasrec_text=$C/models/sasrec_text --model sasrec_id+text=$C/models/sasrec_id_text \
  --out bench/results/cold_$ds/cold.json --table bench/results/cold_$ds/cold.md
