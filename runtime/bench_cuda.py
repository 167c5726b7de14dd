"""The CUDA kernels against onnxruntime's CUDA Conv of the same shape (and the ONNX-function
fallbacks running on the CUDA provider), at batch 1 and 32.

    python -m onnxopt.runtime.bench_cuda [--runs 100] [--tf32] [--batches 1,32]

Needs the library built with ``ONNXOPT_CUDA=1`` and onnxruntime-gpu (CUDAExecutionProvider).
Inputs and outputs are bound to GPU memory (IOBinding), so the times are the ops' alone, host
copies excluded; each ``run_with_iobinding`` ends with onnxruntime's stream synchronisation, so
launch overhead is included.  Sessions are run interleaved (A, B, C, A, B, C, ...) and the table
gives medians.  fp32 by default: onnxruntime's Conv with ``use_tf32=0`` and our cuBLAS calls in
full fp32 math; ``--tf32`` lets both use TF32 tensor cores (onnxruntime's default for Conv;
ONNXOPT_CUDA_TF32=1 for ours).

* AddressConv vs Conv 1x1 (same Cin, Cout, stride, group): the ideal is ratio ~1, i.e. the address
  shift costs nothing beyond the 1x1 conv it is fused into (ShiftNet's claim); "fallback" is the
  Gather + Conv function onnxruntime runs without our library.
* PerforatedConv (kept fraction f of the output positions) vs the dense Conv: the ideal is ratio ~f
  plus the gather and fill; "fallback" is whatever functions.py provides for PerforatedConv.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import cuda_enabled, library_path, ops, session_options
from . import functions as fallbacks
from .functions import address_conv_model

# (Cin, Cout, H, W, stride, group)
ADDRESS_SHAPES = [
    (64, 64, 56, 56, 1, 1),
    (128, 128, 28, 28, 1, 1),
    (256, 256, 28, 28, 1, 1),
    (256, 256, 28, 28, 2, 1),
    (512, 512, 14, 14, 1, 1),
    (256, 256, 28, 28, 1, 4),
    (1024, 1024, 7, 7, 1, 1),
]

# (Cin, Cout, H, W, k, stride, pad, kept fraction)
PERFORATED_SHAPES = [
    (64, 64, 56, 56, 3, 1, 1, 0.5),
    (128, 128, 28, 28, 3, 1, 1, 0.5),
    (256, 256, 14, 14, 3, 1, 1, 0.5),
    (256, 256, 14, 14, 3, 1, 1, 0.25),
    (512, 512, 7, 7, 3, 1, 1, 0.5),
    (128, 256, 28, 28, 3, 2, 1, 0.5),
]


def _model(nodes, x_shape, inits, opset=17, functions=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    imports = [helper.make_opsetid("", opset)]
    if any(n.domain == ops.DOMAIN for n in nodes):
        imports.append(helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 10
    if functions and any(n.domain == ops.DOMAIN for n in nodes):
        fallbacks.add_functions(model)
    return model


def conv_model(x_shape, weight, bias, stride, pad, group) -> onnx.ModelProto:
    kh, kw = weight.shape[2:]
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[kh, kw], strides=[stride] * 2,
                            pads=[pad] * 4, group=group)
    return _model([node], x_shape, [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])


def perforated_model(x_shape, weight, bias, positions, fill, stride, pad) -> onnx.ModelProto:
    kh, kw = weight.shape[2:]
    node = helper.make_node(ops.PERFORATED_CONV, ["X", "W", "B", "positions", "fill"], ["Y"], domain=ops.DOMAIN,
                            kernel_shape=[kh, kw], strides=[stride] * 2, pads=[pad] * 4)
    inits = [numpy_helper.from_array(a, name) for a, name in
             [(weight, "W"), (bias, "B"), (positions, "positions"), (fill, "fill")]]
    return _model([node], x_shape, inits, functions=ops.PERFORATED_CONV in fallbacks.FUNCTION_BUILDERS)


def shift_address(cin: int) -> np.ndarray:
    d = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.array([(k, *d[k * 9 // cin]) for k in range(cin)], np.int32)


def grid_mask(ho: int, wo: int, fraction: float):
    """Every round(1/fraction)-th position (row-major), each position filled from the kept one before it."""
    step = max(1, int(round(1 / fraction)))
    positions = np.arange(0, ho * wo, step, dtype=np.int32)
    fill = (np.arange(ho * wo) // step).astype(np.int32)
    return positions, fill


class Runner:
    """One CUDA session with X bound on the GPU and Y left on the GPU."""

    def __init__(self, model: onnx.ModelProto, x: np.ndarray, tf32: bool, custom_ops: bool = True):
        import onnxruntime as ort

        from ..ir import fit_ir_version

        so = session_options(custom_ops=custom_ops)
        providers = [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider"]
        self.sess = ort.InferenceSession(fit_ir_version(model).SerializeToString(), sess_options=so,
                                         providers=providers)
        self.io = self.sess.io_binding()
        self.x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        self.io.bind_ortvalue_input("X", self.x)
        self.io.bind_output("Y", "cuda", 0)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.sess.run_with_iobinding(self.io)
        return time.perf_counter() - t0

    def output(self) -> np.ndarray:
        return self.io.copy_outputs_to_cpu()[0]


def bench(runners: dict, runs: int) -> dict:
    for r in runners.values():
        for _ in range(10):
            r()
    times = {k: [] for k in runners}
    for _ in range(runs):
        for k, r in runners.items():
            times[k].append(r())
    return {k: float(np.median(v)) for k, v in times.items()}


def _fmt(label, flops, t, base):
    cells = []
    for key in ("ours", "conv", "fallback"):
        if key in t:
            cells.append(f"{t[key] * 1e3:>9.3f}{flops / t[key] / 1e9:>8.0f}")
        else:
            cells.append(f"{'-':>9}{'-':>8}")
    return f"{label:<32}" + "".join(cells) + f"{t['ours'] / t[base]:>7.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--tf32", action="store_true", help="TF32 tensor cores for both onnxruntime's Conv and ours")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    if library_path() is None or not cuda_enabled():
        print("the library was not built with its CUDA kernels (build with ONNXOPT_CUDA=1)")
        return 1
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return 1
    os.environ["ONNXOPT_CUDA_TF32"] = "1" if args.tf32 else "0"  # read when our cuBLAS handles are made
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {'TF32' if args.tf32 else 'fp32'}, runs={args.runs} (interleaved, "
          f"medians), times in ms, rates in GFLOP/s of the dense conv computed (effective for "
          f"PerforatedConv); ratio = ours / Conv")

    head = f"{'ms, GFLOP/s':<32}{'ours':>17}{'Conv':>17}{'fallback':>17}{'ratio':>7}"
    print(f"\nAddressConv (ShiftNet shift address) vs Conv 1x1\n{head}")
    for n in batches:
        for cin, cout, h, w, stride, group in ADDRESS_SHAPES:
            weight = rng.standard_normal((cout, cin // group, 1, 1)).astype(np.float32)
            bias = rng.standard_normal(cout).astype(np.float32)
            x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
            model = address_conv_model(x.shape, weight, bias, shift_address(cin), group, (stride, stride))
            runners = {"ours": Runner(model, x, args.tf32),
                       "conv": Runner(conv_model(x.shape, weight, bias, stride, 0, group), x, args.tf32),
                       "fallback": Runner(model, x, args.tf32, custom_ops=False)}
            ours, fb = runners["ours"], runners["fallback"]
            ours(), fb()
            err = np.abs(ours.output() - fb.output()).max() / max(np.abs(fb.output()).max(), 1e-12)
            if err > (1e-2 if args.tf32 else 1e-4):
                print(f"  MISMATCH ours vs fallback: relative error {err:.2e}")
            t = bench(runners, args.runs)
            ho, wo = -(-h // stride), -(-w // stride)
            flops = 2.0 * n * cout * (cin // group) * ho * wo
            print(_fmt(f"N{n} {cin}->{cout} {h}x{w} s{stride} g{group}", flops, t, "conv"))

    print(f"\nPerforatedConv (grid mask) vs the dense Conv\n{head}")
    for n in batches:
        for cin, cout, h, w, k, stride, pad, fraction in PERFORATED_SHAPES:
            weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
            bias = rng.standard_normal(cout).astype(np.float32)
            x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
            ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            positions, fill = grid_mask(ho, wo, fraction)
            model = perforated_model(x.shape, weight, bias, positions, fill, stride, pad)
            runners = {"ours": Runner(model, x, args.tf32),
                       "conv": Runner(conv_model(x.shape, weight, bias, stride, pad, 1), x, args.tf32)}
            if ops.PERFORATED_CONV in fallbacks.FUNCTION_BUILDERS:
                runners["fallback"] = Runner(model, x, args.tf32, custom_ops=False)
            ours, dense = runners["ours"], runners["conv"]
            ours(), dense()
            ref = dense.output().reshape(n, cout, ho * wo)[:, :, positions[fill]].reshape(n, cout, ho, wo)
            err = np.abs(ours.output() - ref).max() / max(np.abs(ref).max(), 1e-12)
            if err > (1e-2 if args.tf32 else 1e-4):
                print(f"  MISMATCH ours vs dense Conv + fill: relative error {err:.2e}")
            t = bench(runners, args.runs)
            flops = 2.0 * n * cout * cin * k * k * ho * wo  # the dense conv's: effective rates
            print(_fmt(f"N{n} {cin}->{cout} {h}x{w} k{k} s{stride} keep{fraction}", flops, t, "conv"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
