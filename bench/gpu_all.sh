# Every GPU test and benchmark of the project, on the GPU machine (bench/README):
#   bash bench/gpu_all.sh tests|bench-a|bench-b|final|phases|capacity|fused  (each part fits one 10-minute device call);
# logs and result tables land in $OUT (default bench/results/gpu_run/). `final` is what the run of
# 2026-12-02 redid after its fixes (bench/results/gpu_tests_h200.txt), less the capacity table, which
# is its own part now (the whole full-size table in one call).
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
. scripts/gpu_env.sh || exit 1
if [ -f .torch_ext/gsplat_build.tgz ]; then      # a gsplat build carried from an earlier run
  tar xzf .torch_ext/gsplat_build.tgz -C .torch_ext && find .torch_ext -exec touch {} +
fi
# the backend starts isolated (-I), which ignores PYTHONPATH: a .pth file shows it the carried wheels
echo /tmp/site > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/dreamwaltz_gpu_wheels.pth"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_' | tr 'A-Z' 'a-z')
step() { echo "== $*"; local t0=$SECONDS; "$@"; echo "== rc=$? in $((SECONDS - t0)) s: $*"; }

gpu_tests() { step timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider -rs --durations=10 "$@"; }
render() { step timeout 150 python3 bench/render.py --device cuda --out "$OUT/render_gpu_$card.txt"; }
nerf() { step timeout 150 python3 bench/nerf.py --out "$OUT/nerf_gpu_$card.txt"; }
blender_backend() {
  step timeout 90 python3 bench/blender_render.py --backend-only --device cuda --out "$OUT/blender_render_gpu_$card.txt"
}
recipes() { step timeout 230 python3 bench/train.py --recipes --max-minutes 3 --out "$OUT/train_recipes_gpu_$card.txt"; }
phases() {
  step timeout 540 python3 bench/train.py --recipes --phases --recipe-rows dwg-fp16,dwg-fp16-taesd-c --iters 8 \
    --out "$OUT/train_recipes_phases_gpu_$card.txt"
}
capacity() {   # one call: the whole full-size table at 5 % of each schedule
  # ../shared does not travel: copy the held-out motion into .cache/motion here and carry that folder
  local motion=.cache/motion/Yukun-Huang__DreamWaltz-G__aist.npy
  step timeout 570 python3 bench/capacity.py --size full --fraction 0.05 --work .cache/capacity_gpu --max-minutes 6.5 \
    $( [ -f $motion ] && echo --motion $motion ) --out "$OUT/capacity_gpu_${card}_fraction005.txt"
}

case "${1:-tests}" in
  tests) { gpu_tests $(grep -l "mark.gpu" tests/test_*.py); render; } 2>&1 | tee "$OUT/tests.log" ;;
  bench-a) { nerf; blender_backend; } 2>&1 | tee "$OUT/bench_a.log" ;;
  bench-b) recipes 2>&1 | tee "$OUT/bench_b.log" ;;
  phases) phases 2>&1 | tee "$OUT/phases.log" ;;
  fused) { gpu_tests tests/test_fused_hashgrid.py tests/test_nerf.py tests/test_avatar_gpu.py tests/test_recipes.py
           nerf; } 2>&1 | tee "$OUT/fused.log" ;;
  capacity) capacity 2>&1 | tee "$OUT/capacity.log" ;;
  final) { gpu_tests tests/test_render_gpu.py -k ortho; blender_backend; recipes; } 2>&1 | tee "$OUT/final.log" ;;
esac
