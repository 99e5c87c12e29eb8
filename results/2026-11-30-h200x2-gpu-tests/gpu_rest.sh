set -u
source scripts/gpu_env.sh >/dev/null 2>&1 || echo "gpu_env failed"
mkdir -p $OUT/logs
head -n 11 scratch/rest.txt > $OUT/r0.txt; tail -n +12 scratch/rest.txt > $OUT/r1.txt
lane() { CUDA_VISIBLE_DEVICES=$1 timeout -s INT 400 xargs -P $3 -I{} sh -c 'n=$(printf %s "$1" | md5sum | cut -c1-10); python3 -m pytest -p no:cacheprovider -o addopts="" -rfEs -q "$1" > "$0/$n.log" 2>&1; echo "$(tail -n 1 "$0/$n.log") :: $1"' "$OUT/logs" {} < $2; }
lane 0 $OUT/r0.txt 6 > $OUT/lane0.txt & lane 1 $OUT/r1.txt 6 > $OUT/lane1.txt & wait
cat $OUT/lane0.txt $OUT/lane1.txt
