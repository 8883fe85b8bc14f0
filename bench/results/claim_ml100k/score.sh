# Score the claim profile's models (bench/params/claim_ml100k.yaml, seeds 42 and 43) on one split:
#   bash bench/results/claim_ml100k/score.sh test    # -> runs/claim/{metrics,results}.s{42,43}.*, seeds.md
#   bash bench/results/claim_ml100k/score.sh valid   # -> the same files prefixed "valid."
set -ex
SPLIT=${1:?usage: score.sh test|valid}
case $SPLIT in test) X= ;; valid) X=valid. ;; *) echo "score.sh: split must be test or valid, got $SPLIT" >&2; exit 2 ;; esac
export OMP_NUM_THREADS=1
P=bench/params/claim_ml100k.yaml; S=data/splits; O=runs/claim
EP=".venv/bin/python bench/eval_parts.py"
$EP score --params $P --splits $S --split $SPLIT --model sasrec=models/sasrec --out $O/${X}sasrec.pt
for seed in 42 43; do
  if [ $seed = 42 ]; then T=runs/study/t_windows_all/models/teacher; else T=runs/study/claim_s43/models/teacher; fi
  $EP score --params $P --splits $S --split $SPLIT --model teacher=$T --out $O/${X}teacher.s$seed.pt
  for m in student_nokd student; do
    $EP score --params $P --splits $S --split $SPLIT --model $m=runs/study/claim_s$seed/models/$m --out $O/${X}$m.s$seed.pt
  done
  $EP table --params $P --splits $S --parts $O/${X}sasrec.pt $O/${X}teacher.s$seed.pt $O/${X}student_nokd.s$seed.pt \
    $O/${X}student.s$seed.pt --out $O/${X}metrics.s$seed.json --table $O/${X}results.s$seed.md
done
pair() { echo "$1=$O/$X$1.s42.pt,$O/$X$1.s43.pt:$2=$O/$X$2.s42.pt,$O/$X$2.s43.pt"; }
cp $O/${X}sasrec.pt $O/${X}sasrec.s42.pt; cp $O/${X}sasrec.pt $O/${X}sasrec.s43.pt  # one SASRec for both seeds
$EP seeds --params $P --pair $(pair student student_nokd) --pair $(pair teacher student_nokd) --pair $(pair student teacher) \
  --pair $(pair teacher sasrec) --pair $(pair student sasrec) --pair $(pair student_nokd sasrec) > $O/${X}seeds.md
cat $O/${X}seeds.md
