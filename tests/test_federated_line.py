"""The federated line: the server and client optimizers against update rules
derived by hand, the simulator, its command line, and the effect measured
end to end on digits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustagg.cli import main
from robustagg.optim.federated import FederatedServer

D = 5


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _linear_round(
    server: FederatedServer,
    a: list[torch.Tensor],
    counts: list[float],
    steps: int,
    lr: float,
    ids: list[int] | None = None,
) -> list[torch.Tensor]:
    """One round on linear losses f_i(y) = <a_i, y>: every gradient is a_i, wherever it is taken."""
    x = server.params[0]
    server.begin_round([[ai] for ai in a], counts)
    finals = []
    for i, ai in enumerate(a):
        y = x.clone()
        opt = server.client_optimizer([y], lr, client_id=None if ids is None else ids[i])
        for _ in range(steps):
            y.grad = ai.clone()
            opt.step(anchor_grads=[ai] if server.needs_anchor_grads else None)
        finals.append(y)
        server.add_client([y], counts[i], client_id=None if ids is None else ids[i], local_steps=steps, lr=lr)
    server.end_round()
    return finals


def _mean(a: list[torch.Tensor], counts: list[float]) -> torch.Tensor:
    return sum(n * ai for n, ai in zip(counts, a)) / sum(counts)


# ---------------------------------------------------------------------------
# Closed forms on linear losses


@pytest.mark.parametrize("algo", ["mime", "mimelite"])
def test_mime_sgdm_on_linear_losses_has_a_closed_form(algo: str) -> None:
    beta, lr, server_lr, K = 0.9, 0.1, 0.7, 4
    x0 = _vec(0)
    server = FederatedServer([x0.clone()], algo, "sgdm", server_lr=server_lr, beta=beta)
    counts = [1.0, 3.0, 2.0]
    m = None
    x = x0.clone()
    for rnd in range(3):
        a = [_vec(10 * rnd + i + 1) for i in range(3)]
        c = _mean(a, counts)
        m = c if m is None else m  # the statistic starts at the first round's c
        if algo == "mime":
            # g~ = a_i - a_i + c = c for every client: all clients move alike.
            step = (1 - beta) * c + beta * m
        else:
            # MimeLite: U = (1 - beta) a_i + beta m; the weighted mean of the clients' moves.
            step = (1 - beta) * c + beta * m
        finals = _linear_round(server, a, counts, K, lr)
        if algo == "mime":
            for y in finals:
                torch.testing.assert_close(y, x - K * lr * step, rtol=1e-13, atol=1e-13)
        x = x - server_lr * K * lr * step
        m = (1 - beta) * c + beta * m
        torch.testing.assert_close(server.params[0], x, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(server.momentum[0], m, rtol=1e-13, atol=1e-13)


def test_fedavg_and_fedavgm_closed_forms() -> None:
    lr, K, counts = 0.05, 3, [2.0, 1.0]
    a = [_vec(1), _vec(2)]
    fedavg = FederatedServer([torch.zeros(D, dtype=torch.float64)], "fedavg", server_lr=0.5)
    fedavgm = FederatedServer([torch.zeros(D, dtype=torch.float64)], "fedavgm", server_lr=0.5, server_momentum=0.8)
    delta = K * lr * _mean(a, counts)
    v = torch.zeros(D, dtype=torch.float64)
    for rnd in range(1, 4):
        _linear_round(fedavg, a, counts, K, lr)
        _linear_round(fedavgm, a, counts, K, lr)
        v = 0.8 * v + delta
        torch.testing.assert_close(fedavg.params[0], -rnd * 0.5 * delta, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(fedavgm.velocity[0], v, rtol=1e-13, atol=1e-13)


def test_scaffold_controls_on_linear_losses() -> None:
    lr, K, N = 0.1, 5, 4
    a = [_vec(1), _vec(2)]
    counts = [1.0, 1.0]
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], "scaffold", num_clients=N)
    # Round 1: controls 0, so clients run SGD; then c_i = (x - y_i) / (K lr) = a_i and c = (a_1 + a_2) / N.
    _linear_round(server, a, counts, K, lr, ids=[7, 9])
    torch.testing.assert_close(server.client_controls[7][0], a[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(server.client_controls[9][0], a[1], rtol=1e-13, atol=1e-13)
    c = (a[0] + a[1]) / N
    torch.testing.assert_close(server.control[0], c, rtol=1e-13, atol=1e-13)
    x1 = server.params[0].clone()
    # Round 2: client i steps along a_i - c_i + c = c, so every client lands on x - K lr c.
    finals = _linear_round(server, a, counts, K, lr, ids=[7, 9])
    for y in finals:
        torch.testing.assert_close(y, x1 - K * lr * c, rtol=1e-13, atol=1e-13)


def test_mvr_statistic_and_client_step() -> None:
    a_mvr, lr = 0.3, 0.1
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], "mimemvr", mvr_a=a_mvr)
    g1 = [_vec(1), _vec(2)]
    counts = [1.0, 1.0]
    server.begin_round([[g] for g in g1], counts)
    c1 = _mean(g1, counts)
    torch.testing.assert_close(server.momentum[0], c1, rtol=0, atol=0)  # first round: m = c
    y = server.params[0].clone()
    opt = server.client_optimizer([y], lr)
    y.grad = g1[0].clone()
    opt.step(anchor_grads=[g1[0]])
    # MimeMVR: d = g_y - g_x + a c + (1 - a) m = a c + (1 - a) c = c here.
    torch.testing.assert_close(y, -lr * c1, rtol=1e-13, atol=1e-13)
    server.add_client([y], 1.0)
    server.end_round()
    assert server.previous is not None
    g2, g_prev = [_vec(3), _vec(4)], [_vec(5), _vec(6)]
    server.begin_round([[g] for g in g2], counts, [[g] for g in g_prev])
    c2, cp = _mean(g2, counts), _mean(g_prev, counts)
    torch.testing.assert_close(server.momentum[0], a_mvr * c2 + (1 - a_mvr) * ((c1 + c2) - cp), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="prev_full_grads"):
        server.begin_round([[g] for g in g2], counts)


# ---------------------------------------------------------------------------
# Frozen statistics, full-batch gradient, weighting


@pytest.mark.parametrize(
    ("algo", "base"),
    [("mime", "sgdm"), ("mimelite", "sgdm"), ("mime", "adam"), ("mimelite", "adam"), ("mimemvr", "sgdm")],
)
def test_client_steps_leave_the_statistics_frozen(algo: str, base: str) -> None:
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], algo, base)
    gen = torch.Generator().manual_seed(0)
    for rnd in range(2):
        full = [[torch.randn(D, generator=gen, dtype=torch.float64)] for _ in range(2)]
        prev = [[torch.randn(D, generator=gen, dtype=torch.float64)] for _ in range(2)] if rnd else None
        server.begin_round(full, [1.0, 2.0], prev)
        frozen = [t.clone() for t in (server.momentum or []) + (server.exp_avg_sq or [])]
        for _ in range(2):
            y = server.params[0].clone()
            opt = server.client_optimizer([y], 0.1)
            for _ in range(5):
                y.grad = torch.randn(D, generator=gen, dtype=torch.float64)
                opt.step(anchor_grads=[torch.randn(D, generator=gen, dtype=torch.float64)])
            assert not torch.equal(y, server.params[0])
            for before, now in zip(frozen, (server.momentum or []) + (server.exp_avg_sq or [])):
                assert torch.equal(before, now)
            server.add_client([y], 1.0)
        server.end_round()
        # SGDm and Adam update their statistics at the end of the round (SGDm's first
        # update is a no-op: its statistic starts at the first round's c).
        if algo != "mimemvr" and (rnd > 0 or base == "adam"):
            assert any(
                not torch.equal(b, n) for b, n in zip(frozen, (server.momentum or []) + (server.exp_avg_sq or []))
            )


def test_statistics_use_the_full_batch_gradient_at_x_not_the_client_gradients() -> None:
    beta = 0.5
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], "mimelite", "sgdm", beta=beta)
    full = [_vec(1), _vec(2)]
    counts = [3.0, 1.0]
    for rnd in range(2):
        server.begin_round([[g] for g in full], counts)
        m_before = server.momentum[0].clone()
        y = server.params[0].clone()
        opt = server.client_optimizer([y], 0.1)
        y.grad = _vec(100 + rnd)  # unrelated local gradient
        opt.step()
        server.add_client([y], 1.0)
        server.end_round()
        torch.testing.assert_close(
            server.momentum[0], beta * m_before + (1 - beta) * _mean(full, counts), rtol=1e-14, atol=1e-14
        )


def test_client_points_are_averaged_by_example_count() -> None:
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], "fedavg", server_lr=1.0)
    server.begin_round()
    y1, y2 = _vec(1), _vec(2)
    server.add_client([y1], 1.0)
    server.add_client([y2], 3.0)
    server.end_round()
    torch.testing.assert_close(server.params[0], (y1 + 3 * y2) / 4, rtol=1e-14, atol=1e-14)


def test_mime_adam_client_step_is_the_adam_step_from_the_frozen_state() -> None:
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.01
    server = FederatedServer([torch.zeros(D, dtype=torch.float64)], "mime", "adam", beta=b1, beta2=b2, eps=eps)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # give the statistics some history
        server.begin_round([[torch.randn(D, generator=gen, dtype=torch.float64)]], [1.0])
        server.add_client([server.params[0] - 0.01], 1.0)
        server.end_round()
    c = torch.randn(D, generator=gen, dtype=torch.float64)
    server.begin_round([[c]], [1.0])
    gy, gx = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    # torch.optim.Adam from the same state, one step with gradient g~ = gy - gx + c.
    p = torch.nn.Parameter(server.params[0].clone())
    adam = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    adam.state[p] = {
        "step": torch.tensor(float(server.rounds)),
        "exp_avg": server.momentum[0].clone(),
        "exp_avg_sq": server.exp_avg_sq[0].clone(),
    }
    p.grad = (gy - gx) + c
    adam.step()
    y = server.params[0].clone()
    opt = server.client_optimizer([y], lr)
    y.grad = gy
    opt.step(anchor_grads=[gx])
    torch.testing.assert_close(y, p.detach(), rtol=1e-12, atol=1e-14)


def test_client_optimizer_trains_a_module_in_a_plain_loop() -> None:
    """Mime with an nn.Module: the optimizer works with backward() and a closure, and the loss falls."""
    gen = torch.Generator().manual_seed(0)
    w_true = torch.randn(4, generator=gen)
    data = []
    for shift in (-2.0, 0.0, 2.0):  # three heterogeneous clients
        X = torch.randn(64, 4, generator=gen) + shift
        data.append((X, X @ w_true))
    model = torch.nn.Linear(4, 1, bias=False)
    server = FederatedServer(model.parameters(), "mime", "sgdm", beta=0.5)

    def loss_of(params, X, y):
        return ((X @ params[0].reshape(-1) - y) ** 2).mean()

    def total() -> float:
        with torch.no_grad():
            return sum(float(loss_of(list(model.parameters()), X, y)) for X, y in data)

    first = total()
    for _ in range(20):
        full = []
        for X, y in data:
            model.zero_grad()
            loss_of(list(model.parameters()), X, y).backward()
            full.append([p.grad.clone() for p in model.parameters()])
        server.begin_round(full, [64, 64, 64])
        for _i, (X, y) in enumerate(data):
            local = torch.nn.Linear(4, 1, bias=False)
            local.load_state_dict(model.state_dict())
            opt = server.client_optimizer(local.parameters(), lr=0.02)
            for _k in range(5):
                idx = torch.randint(64, (16,), generator=gen)
                anchor = torch.autograd.grad(
                    loss_of(list(model.parameters()), X[idx], y[idx]), list(model.parameters())
                )
                opt.zero_grad()
                opt.step(
                    closure=lambda: loss_of(list(local.parameters()), X[idx], y[idx]).backward(), anchor_grads=anchor
                )
            server.add_client(list(local.parameters()), 64)
        server.end_round()
    assert total() < 0.01 * first


def test_server_errors() -> None:
    p = [torch.zeros(3)]
    with pytest.raises(ValueError, match="unknown algo"):
        FederatedServer(p, "fedprox")
    with pytest.raises(ValueError, match="unknown base"):
        FederatedServer(p, "mime", "rmsprop")
    with pytest.raises(ValueError, match="num_clients"):
        FederatedServer(p, "scaffold")
    with pytest.raises(ValueError, match="beta"):
        FederatedServer(p, "mime", beta=1.0)
    with pytest.raises(ValueError, match="server_lr"):
        FederatedServer(p, "mime", server_lr=0.0)
    server = FederatedServer(p, "mime")
    with pytest.raises(RuntimeError, match="begin_round"):
        server.add_client([torch.zeros(3)], 1.0)
    with pytest.raises(ValueError, match="full_grads and counts"):
        server.begin_round()
    with pytest.raises(ValueError, match="counts"):
        server.begin_round([[torch.zeros(3)]], [-1.0])
    server.begin_round([[torch.zeros(3)]], [1.0])
    y = torch.zeros(3)
    y.grad = torch.ones(3)
    with pytest.raises(ValueError, match="anchor_grads"):
        server.client_optimizer([y], 0.1).step()
    with pytest.raises(ValueError, match="a client returned 2 tensors"):
        server.add_client([y, y], 1.0)
    with pytest.raises(RuntimeError, match="end_round"):
        FederatedServer(p, "fedavg").end_round()


# ---------------------------------------------------------------------------
# Simulator and command line

sim = pytest.importorskip("robustagg.sim.federated")
pytest.importorskip("sklearn", reason="the simulator's data set ships with scikit-learn (README set-up installs it)")


def test_simulator_repeats_bit_for_bit_and_reports_rounds_to_accuracy() -> None:
    cfg = sim.FederatedConfig(algo="mimemvr", rounds=8, clients=20, per_round=4, local_steps=3)
    a, b = sim.run_federated(cfg), sim.run_federated(cfg)
    assert a["curve"] == b["curve"]
    assert sim.run_federated(sim.FederatedConfig(**{**a["config"], "seed": 1}))["curve"] != a["curve"]
    assert set(a["train_loss_at"]) == {"8"}
    acc = [p["test_accuracy"] for p in a["curve"]]
    for level, key in ((0.5, None), (0.9, "rounds_to_90"), (0.95, "rounds_to_95")):
        first = next((k + 1 for k, v in enumerate(acc) if v >= level), None)
        if key:
            assert a[key] == first


def test_local_epochs_give_each_client_its_own_number_of_steps() -> None:
    r = sim.run_federated(sim.FederatedConfig(algo="scaffold", rounds=3, clients=10, per_round=3, local_epochs=0.5))
    assert r["config"]["local_epochs"] == 0.5 and math.isfinite(r["curve"][-1]["train_loss"])


# Under strong heterogeneity (alpha = 0.1) at the larger client lr 0.25, the
# SVRG correction is what keeps Mime stable. Final training loss on seeds
# 0, 1, 2: Mime 0.075, 0.054, 0.030; MimeLite 0.658, 0.161, 0.073 (FedAvg at
# the same lr: 0.09-0.10). Near iid (alpha = 10) both are at 0.025-0.038.
# Seed 0 below: a factor 8.8 against the asserted 2.


def test_mime_correction_keeps_large_steps_stable_under_heterogeneity() -> None:
    base = dict(alpha=0.1, lr=0.25, rounds=150)
    mime = sim.run_federated(sim.FederatedConfig(algo="mime", **base))["curve"][-1]["train_loss"]
    lite = sim.run_federated(sim.FederatedConfig(algo="mimelite", **base))["curve"][-1]["train_loss"]
    assert mime < 0.2
    assert lite > 2 * mime


def test_train_federated_command_writes_json_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    assert (
        main(
            [
                *(
                    "train federated --algo mime --base adam --lr 0.005 --rounds 5 --clients 20 --per-round 4 --json"
                ).split(),
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["config"]["base"] == "adam" and len(result["curve"]) == 5
    assert (tmp_path / "run.png").stat().st_size > 1000
    assert "rounds to 90%" in capsys.readouterr().out


def test_train_federated_grid_writes_table_plot_and_json(tmp_path, monkeypatch) -> None:
    from robustagg.sim import federated_grid

    monkeypatch.setattr(federated_grid, "ALGOS", [("FedAvg", "fedavg", "sgd"), ("Mime (SGDm)", "mime", "sgdm")])
    assert (
        main(
            [
                *("train federated --grid --seeds 2 --rounds 4 --clients 20 --per-round 4 --jobs 1 --out").split(),
                str(tmp_path),
            ]
        )
        == 0
    )
    text = (tmp_path / "federated.md").read_text()
    assert "## alpha = 0.1" in text and "## alpha = 10" in text and "**FedAvg**" in text
    runs = json.loads((tmp_path / "federated.json").read_text())["runs"]
    assert len(runs) == 2 * 2 * 2 * 2  # algorithms x alphas x lrs x seeds
    assert (tmp_path / "federated.png").stat().st_size > 1000


def test_train_federated_rejects_bad_settings(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "federated", "--per-round", "200"])
    assert exit_.value.code == 2
    assert "per_round" in capsys.readouterr().err


def test_former_import_path_names_the_same_objects():
    from robustagg.optim import federated, mime

    assert (mime.FederatedServer, mime.ClientOptimizer, mime.ALGORITHMS, mime.BASES) == (
        federated.FederatedServer,
        federated.ClientOptimizer,
        federated.ALGORITHMS,
        federated.BASES,
    )
