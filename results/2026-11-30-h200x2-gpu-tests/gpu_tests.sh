# one-off: the two-GPU and compile tests, then every GPU-marked test in two lanes (one per GPU)
set -u
source scripts/gpu_env.sh >/dev/null 2>&1 || echo "gpu_env failed"
nvidia-smi -L
po=(-p no:cacheprovider -o addopts="" -rfEs)
echo "== two GPUs, torch.compile"; if false; then
timeout 150 python3 -m pytest -q "${po[@]}" tests/gma/test_triton.py -k "another_device or torch_compile" 2>&1 | tail -8; fi
python3 -m pytest -m gpu --collect-only -q --ignore=tests/report "${po[@]}" | grep '::' | grep -v another_device > $OUT/ids.txt
wc -l < $OUT/ids.txt
grep "tests/gma/" $OUT/ids.txt > $OUT/ids0.txt; grep -v "tests/gma/" $OUT/ids.txt > $OUT/ids1.txt
lane() {  # GPU, ids file, procs
  CUDA_VISIBLE_DEVICES=$1 timeout -s INT ${LANE_S:-400} xargs -P $3 -I{} sh -c 'n=$(printf %s "$1" | md5sum | cut -c1-10); python3 -m pytest -p no:cacheprovider -o addopts="" -rfEs -q "$1" > "$0/$n.log" 2>&1; echo "$(tail -n 1 "$0/$n.log") :: $1"' "$OUT/logs" {} < $2
}
mkdir -p $OUT/logs
lane 0 $OUT/ids0.txt 7 > $OUT/lane0.txt & lane 1 $OUT/ids1.txt 5 > $OUT/lane1.txt & wait
for f in $OUT/lane0.txt $OUT/lane1.txt; do echo "== $f: $(wc -l < $f) of $(wc -l < ${f/lane/ids})"; sed 's/ in [0-9.]*s//' $f | cut -d: -f1 | sort | uniq -c; grep -v " passed" $f | head -20; done
