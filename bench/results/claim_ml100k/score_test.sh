set -ex
cd /work/main
export OMP_NUM_THREADS=1
P=bench/params/claim_ml100k.yaml; S=data/splits; O=runs/claim
EP=".venv/bin/python bench/eval_parts.py"
$EP score --params $P --splits $S --model sasrec=models/sasrec --out $O/sasrec.pt
for seed in 42 43; do
  if [ $seed = 42 ]; then T=runs/study/t_windows_all/models/teacher; else T=runs/study/claim_s43/models/teacher; fi
  $EP score --params $P --splits $S --model teacher=$T --out $O/teacher.s$seed.pt
  $EP score --params $P --splits $S --model student_nokd=runs/study/claim_s$seed/models/student_nokd --out $O/student_nokd.s$seed.pt
  $EP score --params $P --splits $S --model student=runs/study/claim_s$seed/models/student --out $O/student.s$seed.pt
  $EP table --params $P --splits $S --parts $O/sasrec.pt $O/teacher.s$seed.pt $O/student_nokd.s$seed.pt $O/student.s$seed.pt \
    --out $O/metrics.s$seed.json --table $O/results.s$seed.md
done
pair() { echo "$1=$O/$1.s42.pt,$O/$1.s43.pt:$2=$O/$2.s42.pt,$O/$2.s43.pt"; }
cp $O/sasrec.pt $O/sasrec.s42.pt; cp $O/sasrec.pt $O/sasrec.s43.pt
$EP seeds --params $P --pair $(pair student student_nokd) --pair $(pair teacher student_nokd) --pair $(pair student teacher) \
  --pair $(pair teacher sasrec) --pair $(pair student sasrec) --pair $(pair student_nokd sasrec) > $O/seeds.md
cat $O/seeds.md
