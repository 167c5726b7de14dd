"""Pass protocol, registry and manager: ordering, cleanup after each pass, rollback of a failing pass."""
import pytest

from onnxopt import ir
from onnxopt.errors import OnnxoptError
from onnxopt.passmanager import PassContext, PassManager, PassResult, available, default_pipeline, register, resolve


class RemoveRelu:
    name, exact, order = "test-remove-relu", True, 99

    def run(self, graph, ctx):
        result = PassResult(self.name)
        for node in [n for n in graph.nodes if n.op == "Relu"]:
            ir.replace_tensor(node.outputs[0], node.inputs[0], graph)
            result.changed = True
        result.summary = "removed relus"
        return result


class Explodes:
    name, exact, order = "test-explodes", True, 99

    def run(self, graph, ctx):
        graph.nodes.clear()  # damage first, then fail: the manager must undo the damage
        raise RuntimeError("boom")


class Declines:
    name, exact, order = "test-declines", True, 99

    def run(self, graph, ctx):
        result = PassResult(self.name, skipped="nothing to do")
        result.decline(graph.nodes[0], "not a pattern I know")
        return result


def test_manager_runs_cleans_up_and_records(tiny_model):
    g = ir.to_graph(tiny_model)
    results = PassManager([RemoveRelu()]).run(g, PassContext())
    assert [n.op for n in g.nodes] == ["Conv"]  # dangling Relu removed by cleanup
    assert results[0].changed and results[0].summary == "removed relus" and results[0].seconds >= 0


def test_failing_pass_is_rolled_back(tiny_model):
    g = ir.to_graph(tiny_model)
    results = PassManager([Explodes(), RemoveRelu()]).run(g, PassContext())
    assert "internal error" in results[0].skipped and "boom" in results[0].skipped
    assert [n.op for n in g.nodes] == ["Conv"]  # rollback restored both nodes, then RemoveRelu ran


def test_declines_reach_the_result(tiny_model):
    r = PassManager([Declines()]).run(ir.to_graph(tiny_model), PassContext())[0]
    assert r.to_json()["declined"] == [{"node": "conv1", "reason": "not a pattern I know"}]


def test_registry_and_resolve():
    @register
    class Lossy:
        name, exact, order = "test-lossy-registered", False, 1000

        def run(self, graph, ctx):
            return PassResult(self.name)

    assert "test-lossy-registered" in available()
    assert "test-lossy-registered" not in default_pipeline()  # only exact passes run by default
    assert isinstance(resolve(["test-lossy-registered"])[0], Lossy)
    with pytest.raises(OnnxoptError, match="unknown pass 'nope'"):
        resolve(["nope"])
    with pytest.raises(TypeError, match="lacks"):
        register(type("Bad", (), {"name": "bad"}))
