"""MAC and parameter counting, checked against hand-computed values."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cost import count_params, model_stats, zero_filters

from conftest import make_model


def _init(name, shape, zero_rows=()):
    a = np.ones(shape, np.float32)
    a[list(zero_rows)] = 0
    return numpy_helper.from_array(a, name)


def test_conv_macs_hand_computed():
    # 3x3 conv 16->32, stride 2, pad 1 on 1x16x32x32: out 32x16x16; MACs = 32*16*16 * 16*3*3
    m = make_model([helper.make_node("Conv", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("W", (32, 16, 3, 3), (0, 5))])
    s = model_stats(m)
    assert s.macs == 32 * 16 * 16 * 16 * 3 * 3 == 1_179_648
    assert s.layers[0].zero_filters == 2 and s.layers[0].out_channels == 32
    assert s.params == 32 * 16 * 9


def test_grouped_and_depthwise_conv_macs():
    # depthwise 3x3 on 1x8x10x10, pad 1: 8*10*10 outputs * 1*3*3 taps; grouped 1x1 8->16 in 2 groups: 16*100*4
    nodes = [helper.make_node("Conv", ["x", "Wd"], ["d"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "Wg"], ["y"], group=2)]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   [_init("Wd", (8, 1, 3, 3)), _init("Wg", (16, 4, 1, 1))])
    s = model_stats(m)
    assert [layer.macs for layer in s.layers] == [8 * 100 * 9, 16 * 100 * 4]


def test_gemm_matmul_and_batch_resolution():
    # Gemm transB: [N,64] x [10,64]^T; MatMul [N,10] x [10,5]; dynamic N resolved to 1, or to 4 when given
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1), helper.make_node("MatMul", ["h", "M"], ["y"])]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   [_init("W", (10, 64)), _init("B", (10,)), _init("M", (10, 5))])
    assert model_stats(m).macs == 64 * 10 + 10 * 5
    assert model_stats(m, {"x": [4, 64]}).macs == 4 * (64 * 10 + 10 * 5)
    assert count_params(m) == 640 + 10 + 50


def test_conv_transpose_macs():
    # ConvTranspose 4->2, k3, stride 2 on 1x4x5x5: every input pixel scatters 2*3*3 MACs per input channel
    m = make_model([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("W", (4, 2, 3, 3))])
    assert model_stats(m).macs == 4 * 25 * 2 * 9


def test_unknown_shapes_are_counted_not_guessed():
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"])]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("W", (4, 3, 1, 1))])
    s = model_stats(m)
    assert s.macs == 0 and s.unknown_macs == 1 and s.layers[0].macs is None


def test_zero_filters():
    w = np.ones((4, 2, 3, 3), np.float32)
    w[1] = 0
    w[3, 0, 0, 0] = 0
    assert zero_filters(w) == 1
    assert zero_filters(np.zeros(3, np.float32)) == 0


def test_op_histogram_and_custom_ops():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Foo", ["r"], ["y"], domain="my.domain")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m.opset_import.append(helper.make_opsetid("my.domain", 1))
    s = model_stats(m)
    assert s.ops == {"Relu": 1, "my.domain.Foo": 1} and s.custom_ops == {"my.domain.Foo": 1}
