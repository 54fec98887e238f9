# Source on the GPU machine (bench/README): installs the wheels carried in .whl/ (gsplat, smplx,
# diffusers: nothing can be fetched there) and points the gsplat build cache at .torch_ext/
# (carry it back through $OUT to skip the ~75 s build next time).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext} MAX_JOBS=16 PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
