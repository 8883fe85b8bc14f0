#!/usr/bin/env bash
# Issue 19's control: SASRec id+text with the item text encoded by all-MiniLM-L6-v2 instead of SmolLM2, on the
# splits of the SmolLM2 run, scored on test and paired with the ID and SmolLM2-text SASRecs (bench/README.md,
# "Sentence-encoder control"). One process, one torch thread; resumable.
#   bench/minilm_control.sh scientific | beauty
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ds=${1:?scientific | beauty}
case $ds in
  scientific) SRC=runs/sci-sasrec-text; O=runs/sci-minilm; PARTS=runs/sci-parts; RES=bench/results/scientific_text ;;
  beauty) SRC=runs/beauty-sasrec-text; O=runs/beauty-minilm; PARTS=$SRC/parts; RES=bench/results/beauty_text_llm ;;
  *) echo "unknown $ds" >&2; exit 2 ;;
esac
P=bench/params/${ds}_sasrec_minilm.yaml
slmrec item-text --params $P --splits $SRC/splits --interactions $SRC/interactions --out $O/item_text --report $O/item_text.json
[ -f $O/models/sasrec/model.pt ] || slmrec train sasrec --params $P --splits $SRC/splits --out $O/models/sasrec --runs $O/runs
[ -f $PARTS/sasrec_minilm.pt ] || python bench/eval_parts.py score --params $P --splits $SRC/splits \
  --model sasrec_minilm=$O/models/sasrec --split test --out $PARTS/sasrec_minilm.pt
