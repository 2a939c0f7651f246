"""robustagg.flower: aggregate_ndarrays on hand-built client results, the two
Flower strategies on hand-built FitRes / reply Messages, and short in-process
federated runs (Flower's Server loop and Strategy.start, no Ray, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import robustagg
from robustagg.flower import aggregate_ndarrays, make_aggregator

SHAPES = [(3, 4), (5,), (2, 1, 2)]
D = sum(int(np.prod(s)) for s in SHAPES)


def make_clients(n: int, seed: int = 0, dtype=np.float32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(n)]


def rows(clients: list[list[np.ndarray]], dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.concatenate([a.ravel() for a in c])) for c in clients]).to(dtype)


def flat(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))


COUNTS = [10, 20, 5, 40, 15, 30, 25]
W = torch.tensor(COUNTS, dtype=torch.float64)

CASES = [
    ("cm", {}, lambda X: robustagg.coordinate_median(X)),
    ("tm", {"f": 2}, lambda X: robustagg.trimmed_mean(X, 2)),
    ("meamed", {"f": 2}, lambda X: robustagg.meamed(X, 2)),
    ("krum", {"f": 2}, lambda X: robustagg.krum(X, 2)),
    ("mkrum", {"f": 2}, lambda X: robustagg.multi_krum(X, 2)),
    ("bulyan", {"f": 1}, lambda X: robustagg.bulyan(X, 1)),
    ("gm", {}, lambda X: robustagg.geometric_median(X, W)),
    ("mean", {}, lambda X: robustagg.mean(X, W)),
]


@pytest.mark.parametrize("name,kw,expected", CASES, ids=[c[0] for c in CASES])
def test_matches_robustagg_on_flattened_rows(name, kw, expected):
    clients = make_clients(7)
    out = aggregate_ndarrays(list(zip(clients, COUNTS)), name, **kw)
    assert [a.shape for a in out] == SHAPES and all(a.dtype == np.float32 for a in out)
    torch.testing.assert_close(flat(out), expected(rows(clients)), rtol=0, atol=0)


def test_objects_and_pipelines():
    clients = make_clients(7, seed=1)
    X = rows(clients)
    out = aggregate_ndarrays([(c, 1) for c in clients], robustagg.TrimmedMean(1))
    torch.testing.assert_close(flat(out), robustagg.trimmed_mean(X, 1), rtol=0, atol=0)
    # A pipeline ignores the counts; NNM keeps the row order, so it is deterministic.
    agg = robustagg.NNM(2) >> robustagg.CoordinateMedian()
    out = aggregate_ndarrays([(c, k) for c, k in zip(clients, COUNTS)], agg)
    torch.testing.assert_close(flat(out), robustagg.coordinate_median(robustagg.nnm(X, 2)), rtol=0, atol=0)


def test_weighted_mean_uses_counts_and_unweighted_ignores_them():
    a = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    b = [np.ones((2, 2), np.float32), np.full(3, 4.0, np.float32)]
    out = aggregate_ndarrays([(a, 1), (b, 3)], "mean")
    np.testing.assert_allclose(out[0], np.full((2, 2), 0.75))
    np.testing.assert_allclose(out[1], np.full(3, 3.0))
    out = aggregate_ndarrays([(a, 1), (b, 3)], robustagg.Mean(), weighted=False)
    np.testing.assert_allclose(out[1], np.full(3, 2.0))
    # Counts replace the object's own weights; other rules ignore the counts.
    out = aggregate_ndarrays([(a, 1), (b, 3)], robustagg.Mean(torch.tensor([1.0, 0.0])))
    np.testing.assert_allclose(out[0], np.full((2, 2), 0.75))
    c = [np.full((2, 2), 2.0, np.float32), np.full(3, 2.0, np.float32)]
    med = aggregate_ndarrays([(a, 1), (b, 100), (c, 1)], "cm")
    np.testing.assert_array_equal(med[0], np.ones((2, 2)))


def test_dtypes_shapes_and_integer_arrays():
    rng = np.random.default_rng(2)
    clients = [[rng.standard_normal((4, 3)), np.array([k, k + 1], dtype=np.int64), np.float64(k)] for k in range(5)]
    out = aggregate_ndarrays([(c, 1) for c in clients], "cm")
    assert [a.shape for a in out] == [(4, 3), (2,), ()]
    assert [a.dtype for a in out] == [np.float64, np.int64, np.float64]
    np.testing.assert_array_equal(out[1], [2, 3])
    X = torch.stack([torch.from_numpy(np.concatenate([np.ravel(a).astype(np.float64) for a in c])) for c in clients])
    torch.testing.assert_close(flat(out).double(), robustagg.coordinate_median(X), rtol=0, atol=0)
    # Integer means are rounded; float32 work dtype on request.
    out = aggregate_ndarrays([([np.array([1])], 1), ([np.array([2])], 2)], "mean")
    assert out[0].dtype == np.array([1]).dtype and out[0][0] == 2
    out = aggregate_ndarrays([(c, 1) for c in clients], "cm", dtype=torch.float32)
    assert out[0].dtype == np.float64


def test_byzantine_clients_do_not_move_the_median():
    honest = make_clients(7, seed=3)
    byz = [
        [np.full(s, 1e30, np.float32) for s in SHAPES],
        [np.full(s, np.nan, np.float32) for s in SHAPES],
        [np.full(s, -np.inf, np.float32) for s in SHAPES],
    ]
    out = flat(aggregate_ndarrays([(c, 1) for c in honest + byz], "cm"))
    H = rows(honest)
    assert torch.isfinite(out).all()
    assert (out >= H.min(0).values).all() and (out <= H.max(0).values).all()
    tm = flat(aggregate_ndarrays([(c, 1) for c in honest + byz], "tm", f=3))
    assert (tm >= H.min(0).values).all() and (tm <= H.max(0).values).all()
    # tol=0: the default stop (relative change of the objective <= 1e-10) ends
    # ~1e-10 * 1e30 away from the median when a row is 1e30 away.
    gm = flat(aggregate_ndarrays([(c, 1) for c in honest + byz], robustagg.GeometricMedian(tol=0.0)))
    assert torch.isfinite(gm).all() and gm.abs().max() < 10
    assert not torch.isfinite(flat(aggregate_ndarrays([(c, 1) for c in honest + byz], "mean"))).all()


def test_centered_clip_on_updates_keeps_its_center():
    clients = make_clients(6, seed=4)
    ref = [np.full(s, 5.0, np.float32) for s in SHAPES]
    agg = robustagg.CenteredClip(tau=0.5, iters=2)
    out = aggregate_ndarrays([(c, 1) for c in clients], agg, reference=ref)
    R = flat(ref)
    U = rows(clients) - R
    v1 = robustagg.centered_clip(U, torch.zeros(D), 0.5, 2)
    torch.testing.assert_close(flat(out), R + v1)
    out2 = aggregate_ndarrays([(c, 1) for c in clients], agg, reference=out)
    R2 = flat(out)
    torch.testing.assert_close(flat(out2), R2 + robustagg.centered_clip(rows(clients) - R2, v1, 0.5, 2))
    by_name = aggregate_ndarrays([(c, 1) for c in clients], "cc", reference=ref, rule_options={"tau": 0.5, "iters": 2})
    torch.testing.assert_close(flat(by_name), flat(out))


def test_errors():
    c = make_clients(5)
    with pytest.raises(ValueError, match="no client results"):
        aggregate_ndarrays([], "cm")
    with pytest.raises(ValueError, match=r"client 2's array 1 has shape \(6,\), expected \(5,\)"):
        aggregate_ndarrays([(x, 1) for x in c[:2]] + [([c[2][0], np.zeros(6), c[2][2]], 1)], "cm")
    with pytest.raises(ValueError, match="client 1 sent 2 arrays, expected 3"):
        aggregate_ndarrays([(c[0], 1), (c[1][:2], 1)], "cm")
    with pytest.raises(ValueError, match="empty parameter list"):
        aggregate_ndarrays([([], 1)], "cm")
    with pytest.raises(ValueError, match="reference's array 0"):
        aggregate_ndarrays([(x, 1) for x in c], "cm", reference=[np.zeros(3), np.zeros(5), np.zeros((2, 1, 2))])
    with pytest.raises(ValueError, match="client 1's example count"):
        aggregate_ndarrays([(c[0], 1), (c[1], -1)], "mean")
    with pytest.raises(ValueError, match="unknown rule 'median'"):
        aggregate_ndarrays([(x, 1) for x in c], "median")
    with pytest.raises(ValueError, match="needs f"):
        make_aggregator("krum")
    with pytest.raises(ValueError, match="takes no f"):
        make_aggregator("cm", f=1)
    with pytest.raises(ValueError, match="needs tau"):
        make_aggregator("cc")
    with pytest.raises(ValueError, match="go with a rule name"):
        aggregate_ndarrays([(x, 1) for x in c], robustagg.CoordinateMedian(), f=1)
    with pytest.raises(TypeError, match="robustagg Aggregator"):
        aggregate_ndarrays([(x, 1) for x in c], robustagg.NNM(1))
    with pytest.raises(ValueError, match="krum"):  # the rule's own condition, n > 2f + 2
        aggregate_ndarrays([(x, 1) for x in c], "krum", f=2)
    with pytest.raises(ValueError, match="weights"):
        aggregate_ndarrays([(c[0], 0), (c[1], 0)], "mean")


def test_imports_without_flower():
    code = (
        "import sys; sys.modules['flwr'] = None\n"
        "import numpy as np, robustagg, robustagg.flower as fl\n"
        "print(fl.aggregate_ndarrays([([np.ones(2)], 1), ([np.zeros(2)], 1)], 'mean')[0])\n"
        "try:\n    from robustagg.flower import RobustStrategy\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[0.5 0.5]" in out.stdout and "ERR" in out.stdout and "pip install flwr" in out.stdout


# --------------------------------------------------------------------- Flower


def _fit_res(arrays, count, metrics=None):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), count, metrics or {})


def _proxy_class():
    from flwr.server.client_proxy import ClientProxy

    class Proxy(ClientProxy):
        """A client in this process: ``train(arrays, rng) -> (arrays, num_examples)``."""

        def __init__(self, cid, train=None):
            super().__init__(cid)
            self.train = train

        def fit(self, ins, timeout, group_id):
            from flwr.common import parameters_to_ndarrays

            arrays, count = self.train(parameters_to_ndarrays(ins.parameters))
            return _fit_res(arrays, count, {"loss": 1.0})

        def get_properties(self, ins, timeout, group_id):
            raise NotImplementedError

        def get_parameters(self, ins, timeout, group_id):
            raise NotImplementedError

        def evaluate(self, ins, timeout, group_id):
            raise NotImplementedError

        def reconnect(self, ins, timeout, group_id):
            raise NotImplementedError

    return Proxy


def test_strategy_repr_names_the_rule():
    pytest.importorskip("flwr")
    from robustagg.flower import RobustMessageStrategy, RobustStrategy

    assert (
        repr(RobustStrategy("cm")) == "RobustStrategy(aggregator=CoordinateMedian(), on_updates=False, weighted=True)"
    )
    assert repr(RobustMessageStrategy("cm", on_updates=True, weighted=False)) == (
        "RobustMessageStrategy(aggregator=CoordinateMedian(), on_updates=True, weighted=False)"
    )


def test_strategy_aggregate_fit_matches_rules():
    pytest.importorskip("flwr")
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    from robustagg.flower import RobustStrategy

    Proxy = _proxy_class()
    clients = make_clients(7, seed=5)
    results = [(Proxy(str(i)), _fit_res(c, k)) for i, (c, k) in enumerate(zip(clients, COUNTS))]
    X = rows(clients)
    for name, kw, expected in CASES:
        strategy = RobustStrategy(name, **kw)
        assert isinstance(strategy, FedAvg)
        params, metrics = strategy.aggregate_fit(1, results, [])
        out = parameters_to_ndarrays(params)
        assert [a.shape for a in out] == SHAPES
        torch.testing.assert_close(flat(out), expected(X), rtol=0, atol=0)
        assert metrics["robustagg_seconds"] >= 0
    gm = robustagg.GeometricMedian()
    RobustStrategy(gm).aggregate_fit(1, results, [])
    assert gm.info is not None and gm.info.iterations >= 1


def test_foolsgold_histories_follow_the_clients_across_rounds():
    """Round 2 samples the clients in another order and leaves one out: each row still adds to its own
    client's history, so the aggregate is FoolsGold's on the histories keyed by client id, in both APIs."""
    pytest.importorskip("flwr")
    from flwr.common import parameters_to_ndarrays

    from robustagg.flower import RobustMessageStrategy, RobustStrategy

    Proxy = _proxy_class()
    first, second = make_clients(5, seed=8), make_clients(5, seed=9)
    order = [3, 0, 4, 1]
    fit = RobustStrategy("foolsgold")
    fit.aggregate_fit(1, [(Proxy(str(i)), _fit_res(c, 1)) for i, c in enumerate(first)], [])
    params, _ = fit.aggregate_fit(2, [(Proxy(str(i)), _fit_res(second[i], 1)) for i in order], [])
    assert sorted(fit.aggregator.history) == ["0", "1", "2", "3", "4"]

    X1, X2 = rows(first).double(), rows(second).double()
    H = torch.stack([X1[i] + X2[i] for i in order])
    alpha = robustagg.foolsgold_weights(H)
    expected = (alpha.reshape(-1, 1) * X2[order]).sum(0) / alpha.sum()
    torch.testing.assert_close(flat(parameters_to_ndarrays(params)).double(), expected, rtol=1e-6, atol=1e-6)

    keys = ["w", "b", "z"]
    message = RobustMessageStrategy("foolsgold")
    message.aggregate_train(1, [_reply(dict(zip(keys, c)), 1, 10 + i) for i, c in enumerate(first)])
    arrays, _ = message.aggregate_train(2, [_reply(dict(zip(keys, second[i])), 1, 10 + i) for i in order])
    assert sorted(message.aggregator.history) == [10, 11, 12, 13, 14]
    torch.testing.assert_close(flat(arrays.to_numpy_ndarrays()).double(), expected, rtol=1e-6, atol=1e-6)


def test_fltrust_needs_a_root_each_round():
    pytest.importorskip("flwr")
    from flwr.common import parameters_to_ndarrays

    from robustagg.flower import RobustStrategy

    Proxy = _proxy_class()
    clients = make_clients(4, seed=10)
    results = [(Proxy(str(i)), _fit_res(c, 1)) for i, c in enumerate(clients)]
    strategy = RobustStrategy("fltrust")
    with pytest.raises(ValueError, match="^fltrust: no root update"):
        strategy.aggregate_fit(1, results, [])
    root = [np.ones(s, dtype=np.float32) for s in SHAPES]
    strategy.aggregator.root = [torch.from_numpy(a) for a in root]
    params, _ = strategy.aggregate_fit(1, results, [])
    expected = robustagg.fltrust(rows(clients), flat(root))
    torch.testing.assert_close(flat(parameters_to_ndarrays(params)), expected)


def test_strategy_failures_empty_metrics_and_on_updates():
    pytest.importorskip("flwr")
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import SimpleClientManager

    from robustagg.flower import RobustStrategy

    Proxy = _proxy_class()
    clients = make_clients(5, seed=6)
    results = [(Proxy(str(i)), _fit_res(c, 1, {"loss": float(i)})) for i, c in enumerate(clients)]
    failures = [RuntimeError("client lost")]
    assert RobustStrategy("cm").aggregate_fit(1, [], []) == (None, {})
    assert RobustStrategy("cm", accept_failures=False).aggregate_fit(1, results, failures) == (None, {})
    params, _ = RobustStrategy("cm").aggregate_fit(1, results, failures)
    assert params is not None

    def loss_mean(pairs):
        return {"loss": sum(m["loss"] for _, m in pairs) / len(pairs)}

    _, metrics = RobustStrategy("cm", fit_metrics_aggregation_fn=loss_mean).aggregate_fit(1, results, [])
    assert metrics["loss"] == 2.0 and "robustagg_seconds" in metrics

    bad = results[:4] + [(Proxy("x"), _fit_res([np.zeros((3, 4)), np.zeros(5)], 1))]
    with pytest.raises(ValueError, match="client 4 sent 2 arrays"):
        RobustStrategy("cm").aggregate_fit(1, bad, [])

    # on_updates: the reference is the global model sent by configure_fit.
    with pytest.raises(ValueError, match="on_updates=True needs"):
        RobustStrategy("cc", rule_options={"tau": 0.3}, on_updates=True).aggregate_fit(1, results, [])
    ref = [np.full(s, 3.0, np.float32) for s in SHAPES]
    strategy = RobustStrategy(
        "cc", rule_options={"tau": 0.3, "iters": 2}, on_updates=True, min_fit_clients=2, min_available_clients=2
    )
    manager = SimpleClientManager()
    for p, _ in results:
        manager.register(p)
    strategy.configure_fit(1, ndarrays_to_parameters(ref), manager)
    out = parameters_to_ndarrays(strategy.aggregate_fit(1, results, [])[0])
    R = flat(ref)
    torch.testing.assert_close(flat(out), R + robustagg.centered_clip(rows(clients) - R, torch.zeros(D), 0.3, 2))
    # initial_parameters serve as the first reference too.
    s2 = RobustStrategy(
        "cc", rule_options={"tau": 0.3, "iters": 2}, on_updates=True, initial_parameters=ndarrays_to_parameters(ref)
    )
    torch.testing.assert_close(flat(parameters_to_ndarrays(s2.aggregate_fit(1, results, [])[0])), flat(out))


def _least_squares_clients(n_honest: int, n_byz: int, seed: int = 0):
    """Honest clients: 3 local gradient steps of least squares y = x W + c on their own data;
    Byzantine clients: huge values or NaN. Returns the train functions and (W*, c*)."""
    rng = np.random.default_rng(seed)
    W_true, c_true = rng.standard_normal((3, 2)), rng.standard_normal(2)
    trains = []
    for _ in range(n_honest):
        m = int(rng.integers(20, 60))
        A = rng.standard_normal((m, 3))
        Y = A @ W_true + c_true + 0.01 * rng.standard_normal((m, 2))

        def train(arrays, A=A, Y=Y):
            W, c = (a.astype(np.float64) for a in arrays)
            for _ in range(3):
                R = A @ W + c - Y
                W, c = W - 0.2 * A.T @ R / len(A), c - 0.2 * R.mean(0)
            return [W, c], len(A)

        trains.append(train)
    for i in range(n_byz):
        bad = 1e30 if i % 2 == 0 else np.nan
        trains.append(lambda arrays, bad=bad: ([np.full((3, 2), bad), np.full(2, bad)], 1000))
    return trains, (W_true, c_true)


def test_flower_server_loop_in_process():
    """A few rounds of Flower's own Server loop (thread pool, no Ray) over in-process clients."""
    pytest.importorskip("flwr")
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import Server, SimpleClientManager

    from robustagg.flower import RobustStrategy

    Proxy = _proxy_class()
    trains, (W_true, c_true) = _least_squares_clients(8, 3)
    manager = SimpleClientManager()
    for i, train in enumerate(trains):
        manager.register(Proxy(str(i), train))
    init = [np.zeros((3, 2)), np.zeros(2)]
    # Centered clipping keeps a bias of about tau * f / n per round from the 1e30 clients.
    for agg, on_updates, tol in [("tm", False, 0.05), (robustagg.CenteredClip(tau=0.5, iters=3), True, 0.2)]:
        strategy = RobustStrategy(
            agg,
            f=3 if agg == "tm" else None,
            on_updates=on_updates,
            fraction_evaluate=0.0,
            min_fit_clients=11,
            min_available_clients=11,
            initial_parameters=ndarrays_to_parameters(init),
        )
        server = Server(client_manager=manager, strategy=strategy)
        start = time.perf_counter()
        history, _ = server.fit(num_rounds=8, timeout=None)
        assert time.perf_counter() - start < 10
        W, c = parameters_to_ndarrays(server.parameters)
        assert np.abs(W - W_true).max() < tol and np.abs(c - c_true).max() < tol, (agg, W - W_true)
        assert len(history.metrics_distributed_fit["robustagg_seconds"]) == 8


def _reply(arrays: dict[str, np.ndarray], count: int, node: int, error: bool = False):
    from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    if error:
        return Message(metadata=meta, error=Error(code=0, reason="lost"))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": count, "loss": float(node)}),
        }
    )
    return Message(metadata=meta, content=content)


def test_message_strategy_aggregate_train():
    pytest.importorskip("flwr")
    try:
        from flwr.serverapp.strategy import FedAvg
    except ImportError:
        pytest.skip("this Flower has no Message API strategies")
    from robustagg.flower import RobustMessageStrategy

    clients = make_clients(7, seed=7)
    keys = ["w", "b", "z"]
    replies = [_reply(dict(zip(keys, c)), k, i + 1) for i, (c, k) in enumerate(zip(clients, COUNTS))]
    X = rows(clients)
    for name, kw, expected in CASES:
        strategy = RobustMessageStrategy(name, **kw)
        assert isinstance(strategy, FedAvg)
        arrays, metrics = strategy.aggregate_train(1, replies + [_reply({}, 0, 99, error=True)])
        assert list(arrays.keys()) == keys
        out = arrays.to_numpy_ndarrays()
        assert [a.shape for a in out] == SHAPES
        torch.testing.assert_close(flat(out), expected(X), rtol=0, atol=0)
        assert metrics["robustagg_seconds"] >= 0 and "loss" in metrics
    assert RobustMessageStrategy("cm").aggregate_train(1, []) == (None, None)


def test_message_strategy_start_in_process(monkeypatch):
    """Strategy.start over an in-process Grid whose nodes run the least-squares clients."""
    pytest.importorskip("flwr")
    try:
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
        from flwr.serverapp import Grid
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        pytest.skip("this Flower has no Message API strategies")
    from robustagg.flower import RobustMessageStrategy

    # Instruction messages read the run's identity, which a ServerApp process sets.
    for attr, value in [("_run_id", 1), ("_node_id", 0), ("_task_id", 1)]:
        monkeypatch.setattr(TaskIdentity, attr, value)
    trains, (W_true, c_true) = _least_squares_clients(8, 3, seed=1)

    class LocalGrid(Grid):
        def get_node_ids(self):
            return range(1, len(trains) + 1)

        def send_and_receive(self, messages, *, timeout=None):
            out = []
            for msg in messages:
                rec = msg.content["arrays"]
                arrays, count = trains[msg.metadata.dst_node_id - 1]([rec["w"].numpy(), rec["c"].numpy()])
                content = RecordDict(
                    {
                        "arrays": ArrayRecord({"w": Array(arrays[0]), "c": Array(arrays[1])}),
                        "metrics": MetricRecord({"num-examples": count}),
                    }
                )
                out.append(Message(content=content, reply_to=msg))
            return out

        def set_run(self, run_id):
            raise NotImplementedError

        @property
        def run(self):
            raise NotImplementedError

        def create_message(self, *args, **kwargs):
            raise NotImplementedError

        def push_messages(self, messages):
            raise NotImplementedError

        def pull_messages(self, message_ids):
            raise NotImplementedError

    strategy = RobustMessageStrategy(
        robustagg.CenteredClip(tau=0.5, iters=3),
        on_updates=True,
        fraction_evaluate=0.0,
        min_train_nodes=11,
        min_available_nodes=11,
    )
    init = ArrayRecord({"w": Array(np.zeros((3, 2))), "c": Array(np.zeros(2))})
    result = strategy.start(grid=LocalGrid(), initial_arrays=init, num_rounds=8)
    W, c = result.arrays["w"].numpy(), result.arrays["c"].numpy()
    assert np.abs(W - W_true).max() < 0.2 and np.abs(c - c_true).max() < 0.2  # bias as in the test above
    assert np.abs(W).max() < 10 and len(result.train_metrics_clientapp) == 8
