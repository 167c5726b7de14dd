#!/usr/bin/env bash
# GPU validation of onnxopt's CUDA kernels, in two steps (runtime/README.md, "CUDA", has the
# whole procedure):
#
#   bash runtime/gpu_validate.sh prepare   # on a development machine (network, nvcc 13), repo root
#   bash runtime/gpu_validate.sh run       # on the GPU machine, repo root, after onnxruntime-gpu's
#                                          # parts (.ortgpu/p1..p5) have been carried there
#   bash runtime/gpu_validate.sh run quick # the same without the single-op tables (~1 min less)
#   bash runtime/gpu_validate.sh run tests # the tests only (~30 s)
#
# prepare: builds the CUDA wheel of onnxopt (ONNXOPT_CUDA=1) into .whl/ and adds the one Python
#   package the GPU image lacks (onnx-graphsurgeon, pure Python).  .whl/ is git-ignored; carry it.
#   ONNXOPT_CUBLAS_CACHE (default /tmp/cublas-cache) keeps the ~450 MB nvidia-cublas wheel the
#   build takes its headers from, so it is fetched once.
# run: installs onnxruntime-gpu from the parts (shared/tools/ort-gpu-install.sh, once per machine)
#   and the wheels of .whl/ into /tmp, checks CUDAExecutionProvider, runs the CUDA tests and the
#   AddressConv tests, then the benchmarks: whole networks before/after apply (--nets), and the
#   single ops in fp32 and TF32.  Writes logs to $OUT when it is set.
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
step=${1:-}
log_dir=${OUT:-/tmp/onnxopt-gpu-logs}
mkdir -p "$log_dir"

case "$step" in
prepare)
  rm -rf .whl && mkdir -p .whl
  export ONNXOPT_CUDA=1 ONNXOPT_CUBLAS_CACHE=${ONNXOPT_CUBLAS_CACHE:-/tmp/cublas-cache}
  python3 -m pip wheel -q --no-deps -w .whl .
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "onnx-graphsurgeon>=0.5"
  python3 - <<'PY'
import glob, zipfile
whl = glob.glob(".whl/onnxopt-*.whl")[0]
lib = zipfile.ZipFile(whl).read("onnxopt/runtime/libonnxopt_ops.so")
assert b"CUDAExecutionProvider" in lib, f"{whl}: library built without the CUDA kernels"
print(whl, "holds the CUDA kernels")
PY
  ls -la .whl
  echo "now carry .ortgpu/p1 ... (one part per run) and finally .whl, then: bash runtime/gpu_validate.sh run"
  ;;
run)
  nvidia-smi -L
  if [ ! -f /tmp/ortgpu.env ]; then  # once per machine
    ls .ortgpu/p*/part.* || { echo "carry .ortgpu/p1 ... p5 first, one per run" >&2; exit 1; }
    bash .ortgpu/p1/ort-gpu-install.sh > /tmp/ortgpu.env
  fi
  eval "$(cat /tmp/ortgpu.env)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/onnxopt-site .whl/*.whl
  export PYTHONPATH=/tmp/onnxopt-site:$PYTHONPATH PYTHONUNBUFFERED=1
  python3 - <<'PY'
import onnxruntime as ort
from onnxopt.runtime import library_path, ops_info
print("onnxruntime", ort.__version__, ort.__file__)
print("providers", ort.get_available_providers())
print("library", library_path(), ops_info())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu not active"
assert ops_info().get("cuda") == "on", "library built without CUDA"
PY
  set +e
  python3 -m pytest -q -rs -p no:cacheprovider tests/test_runtime_cuda.py tests/test_runtime_address_conv.py \
    2>&1 | tee "$log_dir/pytest.log"
  rc_tests=${PIPESTATUS[0]}
  rc_nets=0 rc_bench=0 rc_tf32=0
  if [ "${2:-}" != "tests" ]; then  # "run tests": the tests only
    python3 -m onnxopt.runtime.bench_cuda --nets --runs 100 2>&1 | tee "$log_dir/bench_nets.log"
    rc_nets=${PIPESTATUS[0]}
  fi
  if [ -z "${2:-}" ]; then  # "run quick": tests and whole networks only
    python3 -m onnxopt.runtime.bench_cuda --runs 100 2>&1 | tee "$log_dir/bench_fp32.log"
    rc_bench=${PIPESTATUS[0]}
    python3 -m onnxopt.runtime.bench_cuda --runs 100 --tf32 2>&1 | tee "$log_dir/bench_tf32.log"
    rc_tf32=${PIPESTATUS[0]}
  fi
  echo "pytest rc=$rc_tests bench rc nets/fp32/tf32=$rc_nets/$rc_bench/$rc_tf32"
  exit $(( rc_tests || rc_nets || rc_bench || rc_tf32 ))
  ;;
*)
  echo "usage: bash runtime/gpu_validate.sh prepare | run [quick|tests]" >&2
  exit 2
  ;;
esac
