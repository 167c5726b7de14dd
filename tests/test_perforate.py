"""Perforation: the PerforatedConv kernel against the numpy reference and its ONNX-function
fallback, the masks, the perforate pass (explicit rates, greedy budgets, refusals, report) and the CLI."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.cost import model_stats
from onnxopt.ir import fit_ir_version
from onnxopt.passes._perforation import grid_axes, grid_mask, kept_count, lattice, make_mask, nearest_fill, pooling_score
from onnxopt.runtime import library_path, ops, session
from onnxopt.runtime.functions import perforated_conv_model
from onnxopt.runtime.reference import conv2d_ref, perforated_conv_ref

LIB = library_path()
needs_lib = pytest.mark.skipif(LIB is None, reason="native library not built (onnxopt.runtime.library_path() is None)")


def run(model, x, **opts):
    return session(fit_ir_version(model), **opts).run(None, {"X": x})[0]


def rel_err(a, ref):
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


def random_mask(rng, plane, rate):
    positions = np.sort(rng.choice(plane, kept_count(1, plane, rate), replace=False)).astype(np.int32)
    fill = rng.integers(0, len(positions), plane).astype(np.int32)  # any valid fill, not only the nearest
    fill[positions] = np.arange(len(positions))
    return positions, fill


def out_size(n, pad, k, s, d):
    return (n + pad - d * (k - 1) - 1) // s + 1


# (N, Cin, Cout, H, W, k, stride, dilation, pads, group, rate, bias)
CASES = [
    (1, 8, 16, 9, 11, 3, 1, 1, (1, 1, 1, 1), 1, 0.3, True),
    (3, 4, 6, 10, 7, 5, 2, 2, (2, 1, 2, 3), 2, 0.5, True),
    (2, 8, 8, 12, 12, 3, 1, 1, (1, 1, 1, 1), 8, 0.2, False),   # depthwise
    (1, 8, 16, 9, 11, 1, 1, 1, (0, 0, 0, 0), 1, 1.0, True),    # 1x1, everything kept
    (3, 6, 12, 13, 9, 3, 2, 1, (0, 0, 0, 0), 3, 0.1, True),
    (1, 16, 40, 15, 17, 3, 1, 2, (2, 2, 2, 2), 1, 0.75, True),
    (1, 3, 33, 20, 20, 5, 1, 1, (2, 2, 2, 2), 1, 0.25, False),
    (3, 32, 64, 8, 8, 3, 2, 1, (1, 0, 1, 0), 2, 0.6, True),
    (1, 64, 70, 14, 14, 3, 1, 1, (1, 1, 1, 1), 1, 0.1, True),
    (1, 12, 12, 6, 31, 1, 2, 1, (0, 0, 0, 0), 12, 0.5, True),  # depthwise 1x1 strided
    (2, 10, 20, 11, 5, 3, 1, 2, (0, 2, 1, 0), 2, 0.9, False),
    (1, 4, 8, 3, 3, 3, 1, 1, (0, 0, 0, 0), 1, 1.0, True),      # a single output position
]


def case_model(case, seed=0, **kw):
    n, cin, cout, h, w, k, s, d, pads, group, rate, bias = case
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    plane = out_size(h, pads[0] + pads[2], k, s, d) * out_size(w, pads[1] + pads[3], k, s, d)
    positions, fill = random_mask(rng, plane, rate)
    model = perforated_conv_model(x.shape, weight, b, positions, fill, group, (s, s), pads, (d, d), **kw)
    ref = perforated_conv_ref(x, weight, b, positions, fill, group, (s, s), pads, (d, d))
    return model, x, ref


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_function_fallback_matches_reference(case):
    model, x, ref = case_model(case)
    assert rel_err(run(model, x, threads=1, custom_ops=False), ref) < 1e-5


@needs_lib
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_kernel_matches_reference_and_fallback(case):
    model, x, ref = case_model(case)
    ours = run(model, x, threads=1)
    assert rel_err(ours, ref) < 1e-5
    assert rel_err(ours, run(model, x, threads=1, custom_ops=False)) < 1e-5


@pytest.mark.parametrize("clip", [(0.0, np.inf), (-0.5, 0.75)], ids=["relu", "clip"])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[8]], ids=["plain", "depthwise", "all-kept", "wide"])
def test_fused_activation_clamps_kernel_and_fallback(case, clip):
    """clip_min / clip_max (a Relu or Clip the pass fused): the kernel clamps after the fill (and with
    everything kept, where there is no fill pass, over the output); the function ends in a Clip."""
    model, x, unclipped = case_model(case, clip=clip)
    ref, tol = np.clip(unclipped, *clip), 1e-5 * np.abs(unclipped).max()  # the error of the sums, before clamping
    assert np.abs(run(model, x, threads=1, custom_ops=False) - ref).max() <= tol
    if LIB is not None:
        assert np.abs(run(model, x, threads=1) - ref).max() <= tol
        assert np.abs(run(model, x, threads=2) - ref).max() <= tol


@needs_lib
def test_kernel_random_shapes():
    rng = np.random.default_rng(7)
    for i in range(25):
        k = int(rng.choice([1, 3, 5]))
        group = int(rng.choice([1, 2]))
        cin = group * int(rng.integers(1, 12))
        case = (int(rng.choice([1, 3])), cin, group * int(rng.integers(1, 40)), int(rng.integers(k, 20)),
                int(rng.integers(k, 20)), k, int(rng.choice([1, 2])), int(rng.choice([1, 2])) if k > 1 else 1,
                tuple(int(p) for p in rng.integers(0, k // 2 + 1, 4)), group, float(rng.uniform(0.1, 1.0)),
                bool(rng.integers(0, 2)))
        n, cin, cout, h, w, k, s, d, pads, group, rate, bias = case
        if out_size(h, pads[0] + pads[2], k, s, d) < 1 or out_size(w, pads[1] + pads[3], k, s, d) < 1:
            continue
        model, x, ref = case_model(case, seed=i)
        assert rel_err(run(model, x, threads=1), ref) < 1e-5, case


@needs_lib
def test_portable_kernels_agree(tmp_path):
    """ONNXOPT_GEMM_ISA=generic runs the portable packing, fill and tile (read once per process)."""
    import subprocess
    import sys

    model, x, ref = case_model((3, 16, 24, 13, 11, 3, 1, 1, (1, 1, 1, 1), 2, 0.6, True))
    onnx.save(fit_ir_version(model), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, sys; from onnxopt.runtime import session; "
            f"y = session(r'{tmp_path / 'm.onnx'}', threads=1).run(None, {{'X': np.load(r'{tmp_path / 'x.npy'}')}})[0]; "
            f"np.save(r'{tmp_path / 'y.npy'}', y)")
    import os

    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ONNXOPT_GEMM_ISA": "generic"})
    assert rel_err(np.load(tmp_path / "y.npy"), ref) < 1e-5


@needs_lib
def test_dense_mask_equals_conv():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    pos = np.arange(14 * 14, dtype=np.int32)
    y = run(perforated_conv_model(x.shape, w, b, pos, pos, pads=(1, 1, 1, 1)), x, threads=1)
    assert rel_err(y, conv2d_ref(x, w, b, pads=(1, 1, 1, 1))) < 1e-5


# Masks dense enough for the row-window (permute) packing, on planes wide enough for several
# windows per row, with K over one K block (Cin/group * k * k > 320) and Cout, P not multiples
# of the 12 x 32 tile: borders, strides, dilations, groups, batch, grid and uniform masks, and
# positions in an arbitrary order (gathers then).
@needs_lib
@pytest.mark.parametrize("k,stride,dilation,pads,group,strategy,rate,shuffle", [
    (3, 1, 1, (1, 1, 1, 1), 1, "uniform", 0.5, False),
    (3, 1, 1, (1, 1, 1, 1), 2, "grid", 0.25, False),
    (3, 2, 1, (1, 0, 2, 1), 1, "uniform", 0.75, False),
    (3, 1, 2, (2, 2, 2, 2), 2, "uniform", 0.5, False),
    (5, 1, 1, (2, 1, 0, 2), 1, "grid", 0.5, False),
    (3, 1, 1, (0, 0, 0, 0), 1, "uniform", 0.9, False),
    (3, 1, 1, (1, 1, 1, 1), 1, "uniform", 0.5, True),
])
def test_row_window_packing_matches_reference(k, stride, dilation, pads, group, strategy, rate, shuffle):
    rng = np.random.default_rng(3)
    n, cin, cout, h, w = 2, 80, 2 * 29, 23, 37
    ho, wo = out_size(h, pads[0] + pads[2], k, stride, dilation), out_size(w, pads[1] + pads[3], k, stride, dilation)
    positions, fill = make_mask(strategy, ho, wo, rate, 0)
    if shuffle:
        order = rng.permutation(len(positions))
        positions, fill = positions[order], np.argsort(order)[fill].astype(np.int32)
    weight = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    model = perforated_conv_model(x.shape, weight, b, positions, fill, group, (stride, stride), pads,
                                  (dilation, dilation))
    ref = perforated_conv_ref(x, weight, b, positions, fill, group, (stride, stride), pads, (dilation, dilation))
    assert rel_err(run(model, x, threads=1), ref) < 1e-5
    np.testing.assert_array_equal(run(model, x, threads=1), run(model, x, threads=2))


@needs_lib
def test_threads_give_identical_results():
    model, x, _ = case_model((3, 64, 96, 28, 28, 3, 1, 1, (1, 1, 1, 1), 1, 0.4, True))
    np.testing.assert_array_equal(run(model, x, threads=1), run(model, x, threads=2))


def mask_inputs_model(model):
    """The model with positions and fill as graph inputs instead of initializers."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for name in ("positions", "fill"):
        init = next(i for i in g.initializer if i.name == name)
        g.initializer.remove(init)
        g.input.append(helper.make_tensor_value_info(name, TensorProto.INT32, ["P" if name == "positions" else "Q"]))
    return model


@needs_lib
@pytest.mark.parametrize("threads", [1, 2])
def test_masks_as_graph_inputs_changing_between_runs(threads):
    # The kernel keeps the last mask's validation and packing plan; a mask that changes between
    # runs of one session (contents, length, one entry, only fill) must give a new one.
    rng = np.random.default_rng(5)
    n, cin, cout, h, w = 2, 40, 24, 13, 37
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    plane = h * w
    masks = [make_mask("uniform", h, w, 0.5, 0), make_mask("grid", h, w, 0.25, 0), random_mask(rng, plane, 0.3)]
    p1, f1 = masks[0]
    p2 = p1.copy()
    p2[len(p2) // 2] += 1 if p2[len(p2) // 2] + 1 not in p2 else -1  # one entry moved
    masks.append((np.sort(p2).astype(np.int32), f1))
    f2 = f1.copy()
    f2[p1[3] + 1] = 3  # only fill differs
    masks.append((p1, f2))
    masks.append(masks[0])
    model = mask_inputs_model(perforated_conv_model(x.shape, weight, b, p1, f1, pads=(1, 1, 1, 1)))
    sess = session(fit_ir_version(model), threads=threads)
    for positions, fill in masks + masks[::-1]:
        positions, fill = np.asarray(positions, np.int32), np.asarray(fill, np.int32)
        y = sess.run(None, {"X": x, "positions": positions, "fill": fill})[0]
        ref = perforated_conv_ref(x, weight, b, positions, fill, 1, (1, 1), (1, 1, 1, 1), (1, 1))
        assert rel_err(y, ref) < 1e-5
        fresh = session(fit_ir_version(perforated_conv_model(x.shape, weight, b, positions, fill, pads=(1, 1, 1, 1))),
                        threads=threads).run(None, {"X": x})[0]
        np.testing.assert_array_equal(y, fresh)
    # a bad mask between good ones is still an error, and does not spoil the next run
    bad = p1.copy()
    bad[-1] = plane
    with pytest.raises(Exception, match=r"is outside the output plane"):
        sess.run(None, {"X": x, "positions": bad, "fill": f1})
    y = sess.run(None, {"X": x, "positions": p1, "fill": f1})[0]
    assert rel_err(y, perforated_conv_ref(x, weight, b, p1, f1, 1, (1, 1), (1, 1, 1, 1), (1, 1))) < 1e-5


@needs_lib
def test_dynamic_batch():
    model, x, ref = case_model((1, 8, 16, 9, 9, 3, 1, 1, (1, 1, 1, 1), 1, 0.5, True), dynamic_batch=True)
    sess = session(fit_ir_version(model), threads=1)
    x3 = np.concatenate([x, 2 * x, -x])
    y = sess.run(None, {"X": x3})[0]
    assert y.shape[0] == 3 and rel_err(y[0], ref[0]) < 1e-5


@needs_lib
def test_spatial_size_other_than_the_masks_is_a_clear_error():
    model, x, _ = case_model((1, 8, 16, 9, 9, 3, 1, 1, (1, 1, 1, 1), 1, 0.5, True), dynamic_hw=True)
    sess = session(fit_ir_version(model), threads=1)
    sess.run(None, {"X": x})  # the size the mask was made for
    with pytest.raises(Exception, match="mask was made for 81 output positions.*10 x 10 = 100"):
        sess.run(None, {"X": np.zeros((1, 8, 10, 10), np.float32)})


@needs_lib
@pytest.mark.parametrize("what, value, message", [
    ("positions", [0, 5, 81], r"positions\[2\] = 81 is outside the output plane \[0, 81\)"),
    ("positions", [-1, 3], r"positions\[0\] = -1"),
    ("fill", None, r"fill\[7\] = 3 is not an index into positions \[0, 3\)"),
])
def test_bad_masks_are_clear_errors(what, value, message):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    positions = np.array([0, 10, 20], np.int32)
    fill = np.zeros(81, np.int32)
    if what == "positions":
        positions = np.array(value, np.int32)
        fill = np.zeros(81, np.int32)
    else:
        fill[7] = 3
    model = perforated_conv_model(x.shape, w, None, positions, fill, pads=(1, 1, 1, 1))
    with pytest.raises(Exception, match=message):
        run(model, x, threads=1)


# ---- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["grid", "uniform", "pooling"])
@pytest.mark.parametrize("h, w, rate", [(16, 16, 0.5), (13, 9, 0.3), (32, 32, 0.1), (7, 7, 0.9)])
def test_masks_counts_determinism_and_nearest_fill(strategy, h, w, rate):
    score = pooling_score(h, w, (3, 3), (2, 2), (1, 1, 1, 1)).ravel() if strategy == "pooling" else None
    positions, fill = make_mask(strategy, h, w, rate, seed=3, score=score)
    again = make_mask(strategy, h, w, rate, seed=3, score=score)
    np.testing.assert_array_equal(positions, again[0])
    np.testing.assert_array_equal(fill, again[1])
    assert len(np.unique(positions)) == len(positions) and np.all(np.diff(positions) > 0)
    if strategy == "grid":
        rows, cols = grid_axes(h, w, rate, 3)
        assert len(positions) == len(rows) * len(cols) <= round(rate * h * w)
        assert len(rows) == int(np.floor(np.sqrt(rate) * h + 1e-9))
    else:
        assert len(positions) == kept_count(h, w, rate)
    # fill: kept positions take themselves, every other one a nearest kept position (Euclidean)
    np.testing.assert_array_equal(positions[fill[positions]], positions)
    ys, xs = np.divmod(np.arange(h * w), w)
    ky, kx = positions // w, positions % w
    d2 = (ys[:, None] - ky[None]) ** 2 + (xs[:, None] - kx[None]) ** 2
    np.testing.assert_array_equal(d2[np.arange(h * w), fill], d2.min(axis=1))


def test_other_seeds_give_other_masks():
    assert not np.array_equal(make_mask("uniform", 16, 16, 0.5, seed=0)[0], make_mask("uniform", 16, 16, 0.5, seed=1)[0])


def test_grid_at_a_quarter_of_an_even_plane_is_a_lattice():
    rows, cols = grid_axes(56, 56, 0.25, seed=0)
    assert lattice(rows)[1] == 2 and lattice(cols)[1] == 2 and len(rows) == 28


def test_pooling_score_counts_windows():
    s = pooling_score(5, 5, (3, 3), (2, 2), (0, 0, 0, 0))
    assert s[2, 2] == 4 and s[0, 0] == 1 and s[1, 2] == 2
    top = make_mask("pooling", 5, 5, 0.04, score=s.ravel())[0]
    assert list(top) == [12]


def test_nearest_fill_breaks_ties_by_seed():
    positions = np.array([0, 2], np.int32)  # position 1 is equally near both
    picks = {int(nearest_fill(1, 3, positions, seed)[1]) for seed in range(20)}
    assert picks == {0, 1}
    assert nearest_fill(1, 3, positions, 5)[1] == nearest_fill(1, 3, positions, 5)[1]


# ---- the pass ---------------------------------------------------------------------------------

def tiny_net(h=12, seed=0):
    """x[N,3,h,h] -> conv1 3x3 (8) -> Relu -> MaxPool 3/2 -> conv2 3x3 (8) -> Relu -> conv3 1x1 -> GAP -> Gemm(4)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in
             (("W1", (8, 3, 3, 3)), ("B1", (8,)), ("W2", (8, 8, 3, 3)), ("B2", (8,)), ("W3", (8, 8, 1, 1)),
              ("G", (4, 8)), ("GB", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              name="pool1"),
             helper.make_node("Conv", ["p1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "W3"], ["c3"], name="conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G", "GB"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def calib():
    return {"x": np.random.default_rng(1).standard_normal((16, 3, 12, 12)).astype(np.float32)}


def perforate(model, opts, tmp_path, **kw):
    opts = {"lut_runs": 3, "lut_path": str(tmp_path / "lut.json"), **opts}
    return onnxopt.apply(model, passes=["perforate"], options={"perforate": opts}, **kw)


def test_explicit_rates(tmp_path, calib):
    out, report = perforate(tiny_net(), {"rates": {"conv1": 0.5, "conv2": 0.3}, "strategy": "uniform"}, tmp_path,
                            calibration=calib)
    res = report.passes[0]
    assert res.changed and res.skipped is None
    perf = [n for n in out.graph.node if n.op_type == ops.PERFORATED_CONV]
    assert sorted(n.name for n in perf) == ["conv1", "conv2"]
    assert any(f.name == ops.PERFORATED_CONV for f in out.functions)
    rows = {r["layer"]: r for r in res.details["layers"]}
    assert rows["conv1"]["kept"] == 72 and rows["conv2"]["kept"] == round(0.3 * 36)
    for r in rows.values():
        assert {"strategy", "rate", "time_saved_ms", "deviation_alone", "realisation"} <= set(r)
        assert r["strategy"] == "uniform" and r["realisation"] == "kernel"
    assert "conv3" not in res.details["eligible"]  # 1x1 convs are not perforated
    # the Relu after each perforated conv is fused into it (exact: the clamp commutes with the fill)
    assert not [n for n in out.graph.node if n.op_type == "Relu"]
    assert all(next(a.f for a in n.attribute if a.name == "clip_min") == 0.0 for n in perf)
    assert rows["conv1"]["fused_activation"] == "Relu" and res.details["activations_fused"] == 2
    assert "2 activations fused" in res.summary
    # MACs: kept positions x per-position MACs
    stats = {layer.name: layer.macs for layer in model_stats(out, {"x": [1, 3, 12, 12]}).layers}
    assert stats["conv1"] == 72 * 8 * 27
    # the reported deviation is what the models really differ by on the calibration data
    ref = session(fit_ir_version(tiny_net())).run(None, calib)[0]
    got = session(out).run(None, calib)[0]
    assert np.isclose(np.abs(got - ref).max() / np.abs(ref).max(), res.details["deviation"], rtol=1e-3)


def test_one_strategy_and_rate_for_all_and_strided_realisation(tmp_path, calib):
    _, report = perforate(tiny_net(), {"strategy": "grid", "rate": 0.25}, tmp_path, calibration=calib)
    rows = {r["layer"]: r for r in report.passes[0].details["layers"]}
    assert set(rows) == {"conv1", "conv2"}
    assert rows["conv1"]["realisation"] in ("strided", "kernel")  # auto: the faster by measured times
    out, report = perforate(tiny_net(), {"strategy": "grid", "rate": 0.25, "realisation": "strided"}, tmp_path,
                            calibration=calib)
    rows = {r["layer"]: r for r in report.passes[0].details["layers"]}
    assert rows["conv1"]["realisation"] == "strided" and rows["conv1"]["kept_fraction"] == 0.25
    assert not any(n.op_type == ops.PERFORATED_CONV for n in out.graph.node)
    kernel, _ = perforate(tiny_net(), {"strategy": "grid", "rate": 0.25, "realisation": "kernel"}, tmp_path,
                          calibration=calib)
    assert sum(n.op_type == ops.PERFORATED_CONV for n in kernel.graph.node) == 2
    # both realisations compute the same function (kernel or its ONNX fallback vs strided Conv + Gathers)
    a = session(out).run(None, calib)[0]
    b = session(kernel).run(None, calib)[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pooling_strategy_follows_the_pooling_layer(tmp_path, calib):
    _, report = perforate(tiny_net(), {"strategy": "pooling", "rate": 0.5, "measure_time": False}, tmp_path,
                          calibration=calib)
    rows = {r["layer"]: r for r in report.passes[0].details["layers"]}
    assert rows["conv1"]["strategy"] == "pooling"
    assert rows["conv2"]["strategy"].startswith("pooling->uniform")


def test_impact_strategy_needs_calibration_and_uses_it(tmp_path, calib):
    _, report = perforate(tiny_net(), {"strategy": "impact", "rate": 0.5}, tmp_path)
    assert "calibration" in report.passes[0].skipped
    _, report = perforate(tiny_net(), {"strategy": "impact", "rate": 0.5, "measure_time": False}, tmp_path,
                          calibration=calib)
    assert report.passes[0].changed


def test_greedy_respects_a_deviation_budget(tmp_path, calib, monkeypatch):
    # Layer times proportional to the kept fraction, so the search has steps to take whatever this
    # machine's kernel speed (measured times are the latency table's business, tested elsewhere).
    from onnxopt.passes import perforate as perforate_module

    monkeypatch.setattr(perforate_module._Perforator, "layer_time",
                        lambda self, layer, rate, realisation=None: float(rate))
    budget = 0.3  # conv2 alone at 0.75 deviates ~0.19 on these inputs: at least one step fits
    out, report = perforate(tiny_net(), {"budget_deviation": budget, "strategy": "uniform"}, tmp_path,
                            calibration=calib)
    res = report.passes[0]
    assert res.skipped is None
    assert res.details["deviation"] <= budget
    steps = res.details["greedy_steps"]
    assert steps and any(s["accepted"] for s in steps)
    ref = session(fit_ir_version(tiny_net())).run(None, calib)[0]
    got = session(out).run(None, calib)[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= budget + 1e-6


def test_greedy_with_accuracy_budget_and_labels(tmp_path, calib):
    labels = np.random.default_rng(2).integers(0, 4, 16)
    _, report = perforate(tiny_net(), {"budget_accuracy_drop": 0.0, "strategy": "grid"}, tmp_path,
                          calibration=calib, labels=labels)
    d = report.passes[0].details
    assert d["accuracy"] >= d["accuracy_before"]


def test_greedy_latency_budget(tmp_path, calib):
    _, report = perforate(tiny_net(), {"budget_latency_ms": 1e6}, tmp_path, calibration=calib)
    d = report.passes[0].details
    assert not d["layers"] and d["latency_estimate_ms"] == d["latency_base_ms"]  # already fast enough
    _, report = perforate(tiny_net(), {"budget_latency_ms": 0.0, "strategy": "uniform"}, tmp_path, calibration=calib)
    res = report.passes[0]
    assert res.details["latency_estimate_ms"] < res.details["latency_base_ms"] or not res.details["layers"]
    assert any("latency budget" in reason for _, reason in res.declined)


@pytest.mark.parametrize("opts", [{"budget_deviation": 0.1}, {"budget_latency_ms": 0.01}])
def test_automatic_selection_refuses_without_calibration(tmp_path, opts):
    out, report = perforate(tiny_net(), opts, tmp_path)
    assert "needs calibration data" in report.passes[0].skipped
    assert not any(n.domain == ops.DOMAIN for n in out.graph.node)


@pytest.mark.parametrize("opts, message", [
    ({}, "nothing to do"),
    ({"rates": {"nope": 0.5}}, "no eligible conv named 'nope'"),
    ({"rate": 0.5, "strategy": "diagonal"}, "unknown strategy"),
    ({"rate": 1.5}, "outside"),
    ({"rate": 0.5, "budget_deviation": 0.1}, "not both"),
    ({"rate": 0.5, "colour": 1}, "unknown option"),
])
def test_refusals(tmp_path, opts, message):
    _, report = perforate(tiny_net(), opts, tmp_path)
    assert message in report.passes[0].skipped


def test_target_that_cannot_run_here(tmp_path, calib):
    """A cuda target on a machine without the provider: explicit rates still perforate (no layer
    times: the kernel where the library is installed), automatic selection refuses and says why."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    out, report = perforate(tiny_net(), {"rates": {"conv1": 0.5}, "strategy": "grid"}, tmp_path, calibration=calib,
                            target="cuda")
    res = report.passes[0]
    assert res.changed and res.details["time_source"].startswith("none: target 'cuda' needs CUDAExecutionProvider")
    assert "error" in report.latency
    _, report = perforate(tiny_net(), {"budget_deviation": 0.1}, tmp_path, calibration=calib, target="cuda")
    assert report.passes[0].skipped.startswith("automatic selection needs layer times on the target")


def test_not_in_the_default_pipeline():
    from onnxopt.passmanager import available, default_pipeline

    assert "perforate" in available() and "perforate" not in default_pipeline()


def test_cli_perforate(tmp_path, calib):
    from onnxopt.cli import _parse_perforate, main

    assert _parse_perforate("conv1=0.5,conv3=0.25") == {"rates": {"conv1": 0.5, "conv3": 0.25}}
    assert _parse_perforate("grid:0.5") == {"strategy": "grid", "rate": 0.5}
    assert _parse_perforate("impact") == {"strategy": "impact"}
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_net(), src)
    assert main([ "apply", str(src), "--budget-deviation", "0.1"]) == 2  # no calibration data
    np.savez(tmp_path / "cal.npz", x=calib["x"], labels=np.zeros(16, np.int64))
    rc = main(["apply", str(src), "-o", str(tmp_path / "o.onnx"), "--passes", "perforate", "--perforate",
               "uniform:conv1=0.5", "--calibration", str(tmp_path / "cal.npz")])
    assert rc == 0
    out = onnx.load(tmp_path / "o.onnx")
    assert [n.name for n in out.graph.node if n.op_type == ops.PERFORATED_CONV] == ["conv1"]
    assert main(["apply", str(src), "--perforate", "conv1=2"]) == 2


def test_dynamic_spatial_size_is_declined(tmp_path):
    """A mask made for 16x16 must not be baked into a model whose H, W stay dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out, report = onnxopt.apply(model, passes=["perforate"], input_shapes={"x": [1, 3, 16, 16]},
                                options={"perforate": {"rate": 0.25, "strategy": "grid"}})
    res = report.passes[0]
    assert not res.changed and any("spatial size is dynamic" in reason for _, reason in res.declined)
    assert [n.op_type for n in out.graph.node] == ["Conv"]
