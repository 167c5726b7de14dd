"""The CUDA kernels against onnxruntime's CUDA Conv of the same shape (and the ONNX-function
fallbacks running on the CUDA provider), and whole networks before/after ``apply``, at batch 1 and 32.

    python -m onnxopt.runtime.bench_cuda [--runs 100] [--tf32] [--batches 1,32] [--nets]

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
* ``--nets`` (instead of the op tables): ShiftNet-style nets (original, the same net with the
  shifts deleted, and after ``apply --target cuda``), ShuffleNetV2 1.0x at 224 (original, after
  apply) and a VGG-16-style net (dense, perforated by ``apply --target cuda`` to output deviation
  <= 0.2 and <= 0.5; the greedy search times its layers on the CUDA provider), each at every batch
  in fp32 and in TF32.  Before timing, each optimised model's output on the CUDA provider is
  compared with the original's on the CUDA provider and on the CPU (and, for the lossy ones, with
  itself on the CPU), and the providers that ran its nodes are counted from onnxruntime's profile.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
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


PROVIDER, DEVICE = "CUDAExecutionProvider", "cuda"  # a CPU dry run of this script swaps both


def cuda_session(model: onnx.ModelProto, tf32: bool, custom_ops: bool = True, profile_prefix: str | None = None):
    import onnxruntime as ort

    from ..ir import fit_ir_version

    so = session_options(custom_ops=custom_ops, profile_prefix=profile_prefix)
    providers = [(PROVIDER, {"use_tf32": "1" if tf32 else "0"} if PROVIDER == "CUDAExecutionProvider" else {}),
                 "CPUExecutionProvider"]
    return ort.InferenceSession(fit_ir_version(model).SerializeToString(), sess_options=so, providers=providers)


class Runner:
    """One CUDA session with its (single) input bound on the GPU and its first output left there."""

    def __init__(self, model: onnx.ModelProto, x: np.ndarray, tf32: bool, custom_ops: bool = True):
        import onnxruntime as ort

        self.sess = cuda_session(model, tf32, custom_ops)
        self.io = self.sess.io_binding()
        self.x = ort.OrtValue.ortvalue_from_numpy(x, DEVICE, 0)
        self.io.bind_ortvalue_input(self.sess.get_inputs()[0].name, self.x)
        self.io.bind_output(self.sess.get_outputs()[0].name, DEVICE, 0)

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


# ------------------------------------------------------------------------------------ whole networks

def set_tf32(on: bool) -> None:
    """Our cuBLAS math mode; read when a kernel's cuBLAS handle is made, i.e. set before the session."""
    os.environ["ONNXOPT_CUDA_TF32"] = "1" if on else "0"


def provider_counts(model: onnx.ModelProto, x: np.ndarray, runs: int = 20) -> str:
    """Where the nodes ran (onnxruntime's profile of ``runs`` CUDA runs after one warm-up) and each op
    type's median time per run: on the CUDA provider a node's time is its host-side launch time
    (kernels run asynchronously), the cost that dominates small batches."""
    import collections
    import json

    from .profiling import parse_events

    with tempfile.TemporaryDirectory() as tmp:
        sess = cuda_session(model, tf32=False, profile_prefix=f"{tmp}/prof")
        feeds = {sess.get_inputs()[0].name: x}
        for _ in range(runs + 1):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            profile = parse_events(json.load(f), skip_runs=1)
    where = collections.Counter((n.provider.replace("ExecutionProvider", ""), n.op) for n in profile.nodes)
    by_provider = collections.Counter()
    for (provider, _), count in where.items():
        by_provider[provider] += count
    custom = sorted(f"{op} x{count} on {provider}" for (provider, op), count in where.items() if op in ops.NATIVE_OPS)
    copies = sum(count for (_, op), count in where.items() if op.startswith("Memcpy"))
    ops_us = ", ".join(f"{op} {t:.0f}" for op, t in profile.by_op().items())
    return (", ".join(f"{k} {v}" for k, v in sorted(by_provider.items())) + " nodes"
            + (f"; {', '.join(custom)}" if custom else "") + f"; {copies} memcpy nodes\n"
            + f"      node time per run {profile.total_us:.0f} us (medians): {ops_us}")


def cpu_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from . import session

    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def build_nets(batches: list[int], tf32_search: bool) -> list[tuple[str, int, dict, str, set]]:
    """(label, input size, {batch: {variant: model}}, baseline variant, lossy variants) per network.
    The shift nets are exported at each batch size (a static shape lets the shift pass fuse the
    residual Adds); the VGG net has a dynamic batch (perforation needs static H, W only)."""
    import logging

    import torch

    import onnxopt
    from onnxopt.models import export_onnx, shiftnet, shufflenetv2
    from onnxopt.models.vgg import vgg16

    logging.getLogger("onnxopt").setLevel(logging.ERROR)

    def exact_variants(label, size, nets):
        per_batch = {}
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            per_batch[batch] = {name: export_onnx(net, x) for name, net in nets.items()}
            applied, report = onnxopt.apply(per_batch[batch]["original"], target="cuda")
            per_batch[batch]["applied"] = applied
            print(f"{label} N{batch}: " + "; ".join(f"{r.name}: {r.summary}" for r in report.passes if r.changed))
            if "no-shift" in nets:  # the chain rule (plain 1x1 convs next to AddressConvs join them) off
                per_batch[batch]["applied-nochain"], _ = onnxopt.apply(
                    per_batch[batch]["original"], target="cuda", options={"shift": {"address_chains": False}})
        return per_batch

    nets = []
    for width, size in ((32, 32), (64, 56)):
        label = f"ShiftNet w{width} @{size}"
        nets.append((label, size, exact_variants(label, size, {"original": shiftnet(width=width),
                                                               "no-shift": shiftnet(width=width, with_shift=False)}),
                     "no-shift", set()))
    label = "ShuffleNetV2 1.0x @224"
    nets.append((label, 224, exact_variants(label, 224, {"original": shufflenetv2(width=1.0)}), "original", set()))

    size = 112
    dense = export_onnx(vgg16(num_classes=100, width=0.5, pool_size=1, hidden=256), torch.zeros(1, 3, size, size),
                        dynamic_batch=True)
    calib = {"input": np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)}
    variants = {"dense": dense}
    set_tf32(tf32_search)
    lut = tempfile.TemporaryDirectory()  # layer times measured afresh, shared by both budgets
    for budget in (0.2, 0.5):
        t0 = time.perf_counter()
        out, report = onnxopt.apply(dense, passes=["perforate"], calibration=calib, verify=False, target="cuda",
                                    options={"perforate": {"budget_deviation": budget, "strategy": "grid",
                                                           "lut_runs": 10, "lut_path": f"{lut.name}/lut.json"}})
        res = report.passes[0]
        print(f"VGG-16-style w0.5 @{size}, deviation <= {budget} ({time.perf_counter() - t0:.0f} s search, "
              f"layer times on CUDA, {'TF32' if tf32_search else 'fp32'}): {res.skipped or res.summary}")
        variants[f"perf<={budget}"] = out
    lut.cleanup()
    nets.append((f"VGG-16-style w0.5 @{size}", size, {batch: variants for batch in batches}, "dense",
                 {"perf<=0.2", "perf<=0.5"}))
    return nets


def check_net(label: str, size: int, per_batch: dict, baseline: str, lossy: set, batch: int) -> int:
    """Outputs of every non-baseline variant on CUDA against the baseline's (CUDA and CPU) and itself
    on the CPU; fp32 math throughout.  Returns the number of mismatches (a lossy variant must still
    match itself on the CPU)."""
    mismatches = 0
    set_tf32(False)
    variants = per_batch[batch]
    x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
    reference = "original" if "original" in variants else baseline
    ref_gpu = Runner(variants[reference], x, tf32=False)
    ref_gpu()
    ref_gpu = ref_gpu.output()
    ref_cpu = cpu_output(variants[reference], x)
    scale = max(np.abs(ref_cpu).max(), 1e-12)
    print(f"  {label} N{batch}: {reference} CUDA vs CPU rel err {np.abs(ref_gpu - ref_cpu).max() / scale:.2e}")
    for name, model in variants.items():
        if name in (reference, "no-shift"):
            continue
        run = Runner(model, x, tf32=False)
        run()
        got = run.output()
        own_cpu = cpu_output(model, x)
        own = np.abs(got - own_cpu).max() / max(np.abs(own_cpu).max(), 1e-12)
        vs_gpu = np.abs(got - ref_gpu).max() / scale
        vs_cpu = np.abs(got - ref_cpu).max() / scale
        kind = "deviation (lossy)" if name in lossy else "rel err"
        bad = own >= 1e-4 or (name not in lossy and max(vs_gpu, vs_cpu) >= 1e-4)
        mismatches += bad
        flag = "  MISMATCH" if bad else ""
        print(f"  {label} N{batch}: {name} on CUDA vs {reference} on CUDA {kind} {vs_gpu:.2e}, on CPU "
              f"{vs_cpu:.2e}; vs itself on CPU {own:.2e}{flag}")
    if batch == 1:
        for name, model in variants.items():
            print(f"    {name}: {provider_counts(model, x)}")
    return mismatches


def nets_tables(batches: list[int], runs: int) -> int:
    """Prints the parity checks and the latency tables; returns the number of parity mismatches."""
    nets = build_nets(batches, tf32_search=True)
    print("\nParity (fp32 math: use_tf32=0, ONNXOPT_CUDA_TF32=0)")
    mismatches = sum(check_net(*net, batch) for net in nets for batch in batches)
    print(f"\nWhole networks on the CUDA provider, inputs/outputs bound on the GPU, {runs} interleaved runs, "
          f"median ms; ratio = variant / baseline")
    for tf32 in (False, True):
        set_tf32(tf32)
        print(f"\n{'TF32' if tf32 else 'fp32'} (onnxruntime use_tf32={int(tf32)}, ONNXOPT_CUDA_TF32={int(tf32)})")
        for label, size, per_batch, baseline, _ in nets:
            for batch in batches:
                variants = per_batch[batch]
                x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
                t = bench({name: Runner(model, x, tf32) for name, model in variants.items()}, runs)
                cells = "  ".join(f"{name} {t[name] * 1e3:.3f}" for name in variants)
                ratios = "  ".join(f"{name}/{baseline} {t[name] / t[baseline]:.3f}" for name in variants
                                   if name != baseline)
                print(f"{label:<26} N{batch:<3} {cells}  |  {ratios}")
    if mismatches:
        print(f"\n{mismatches} parity MISMATCH(es) above")
    return mismatches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--tf32", action="store_true", help="TF32 tensor cores for both onnxruntime's Conv and ours")
    ap.add_argument("--nets", action="store_true", help="whole networks before/after apply instead of single ops")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    if library_path() is None or not cuda_enabled():
        print("the library was not built with its CUDA kernels (build with ONNXOPT_CUDA=1)")
        return 1
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return 1
    batches = [int(b) for b in args.batches.split(",")]
    if args.nets:
        print(f"onnxruntime {ort.__version__}, batches {batches}")
        if args.tf32:
            print("--tf32 is ignored with --nets: every net is timed in fp32 and in TF32")
        return 1 if nets_tables(batches, args.runs) else 0
    set_tf32(args.tf32)
    rng = np.random.default_rng(0)
    mismatches = 0
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
                mismatches += 1
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
                mismatches += 1
            t = bench(runners, args.runs)
            flops = 2.0 * n * cout * cin * k * k * ho * wo  # the dense conv's: effective rates
            print(_fmt(f"N{n} {cin}->{cout} {h}x{w} k{k} s{stride} keep{fraction}", flops, t, "conv"))
    sys.stdout.flush()
    if mismatches:
        print(f"\n{mismatches} MISMATCH(es) above")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
