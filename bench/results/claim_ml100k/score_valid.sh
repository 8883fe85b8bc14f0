set -ex
cd /work/main
export OMP_NUM_THREADS=1
P=bench/params/claim_ml100k.yaml; S=data/splits; O=runs/claim
EP=".venv/bin/python bench/eval_parts.py"
$EP score --params $P --splits $S --model sasrec=models/sasrec --split valid --out $O/valid.sasrec.pt
for seed in 42 43; do
  if [ $seed = 42 ]; then T=runs/study/t_windows_all/models/teacher; else T=runs/study/claim_s43/models/teacher; fi
  $EP score --params $P --splits $S --model teacher=$T --split valid --out $O/valid.teacher.s$seed.pt
  $EP score --params $P --splits $S --model student_nokd=runs/study/claim_s$seed/models/student_nokd --split valid --out $O/valid.student_nokd.s$seed.pt
  $EP score --params $P --splits $S --model student=runs/study/claim_s$seed/models/student --split valid --out $O/valid.student.s$seed.pt
  $EP table --params $P --splits $S --parts $O/valid.sasrec.pt $O/valid.teacher.s$seed.pt $O/valid.student_nokd.s$seed.pt $O/valid.student.s$seed.pt \
    --out $O/valid.metrics.s$seed.json --table $O/valid.results.s$seed.md
done
pair() { echo "$1=$O/valid.$1.s42.pt,$O/valid.$1.s43.pt:$2=$O/valid.$2.s42.pt,$O/valid.$2.s43.pt"; }
cp $O/valid.sasrec.pt $O/valid.sasrec.s42.pt; cp $O/valid.sasrec.pt $O/valid.sasrec.s43.pt
$EP seeds --params $P --pair $(pair student student_nokd) --pair $(pair teacher student_nokd) --pair $(pair student teacher) \
  --pair $(pair teacher sasrec) --pair $(pair student sasrec) --pair $(pair student_nokd sasrec) > $O/valid.seeds.md
cat $O/valid.seeds.md
