"""The personalized line: weighted gradient averaging with and without bias
correction, the weight helpers, the simulator, its grid report, and the
effect the line exists for (Grimberg et al. 2021; Chayti et al. 2021)
measured end to end."""

from __future__ import annotations

import io
import json

import pytest
import torch

from robustagg.optim.personalized import (
    BiasCorrectedWGA,
    WeightedGradientAveraging,
    collaborator_weight,
    decaying_beta,
    estimate_bias_variance,
    optimal_weights,
)
from robustagg.sim.personalized import PersonalizedConfig, _Quadratic, run_personalized

F64 = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------------------
# Update rules on hand-computable cases


def test_wga_step_moves_by_lr_times_the_weighted_gradients() -> None:
    params = [_t(1.0, 2.0), torch.tensor([[3.0]], dtype=F64)]
    grads = [
        [_t(1.0, 0.0), torch.tensor([[4.0]], dtype=F64)],
        [_t(2.0, 2.0), torch.tensor([[0.0]], dtype=F64)],
        [_t(-4.0, 8.0), torch.tensor([[8.0]], dtype=F64)],
    ]
    opt = WeightedGradientAveraging(params, [0.5, 0.25, 0.25], lr=0.5)
    opt.step(grads)
    # u = 0.5 g0 + 0.25 g1 + 0.25 g2 = (0, 2.5) and (4); p - 0.5 u
    assert torch.equal(params[0], _t(1.0, 0.75))
    assert torch.equal(params[1], torch.tensor([[1.0]], dtype=F64))


def test_bias_correction_is_learned_on_a_step_and_applied_from_the_next() -> None:
    x = [_t(0.0)]
    opt = BiasCorrectedWGA(x, [0.5, 0.5], lr=0.25, beta=0.5)
    opt.step([[_t(2.0)], [_t(4.0)]])
    # step 1 uses c = 0: u = 0.5 * 2 + 0.5 * 4 = 3; then c = 0.5 * 0 + 0.5 * 0.5 * (2 - 4) = -0.5
    assert torch.equal(x[0], _t(-0.75))
    assert torch.equal(opt.corrections()[0][0], _t(-0.5))
    opt.step([[_t(1.0)], [_t(1.0)]])
    # step 2 uses c = -0.5: u = 1 - 0.5 = 0.5; then c = 0.5 * (-0.5) + 0.5 * 0.5 * 0 = -0.25
    assert torch.equal(x[0], _t(-0.875))
    assert torch.equal(opt.corrections()[0][0], _t(-0.25))


def test_bias_correction_makes_the_step_follow_user_0_once_learned() -> None:
    # Constant gradients: after beta = 1 the corrections hold a_i (g_0 - g_i) exactly,
    # so every later step is along g_0, whatever the collaborators send.
    params = [torch.zeros(3, dtype=F64), torch.zeros(2, 2, dtype=F64)]
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(3, generator=g, dtype=F64), torch.randn(2, 2, generator=g, dtype=F64)] for _ in range(4)]
    opt = BiasCorrectedWGA(params, [0.4, 0.3, 0.2, 0.1], lr=0.1, beta=1.0)
    opt.step(grads)
    before = [p.clone() for p in params]
    opt.step(grads)
    for p, b, g0 in zip(params, before, grads[0]):
        torch.testing.assert_close(p, b - 0.1 * g0, rtol=1e-12, atol=1e-14)
    assert opt.state[params[1]]["corrections"].shape == (3, 2, 2)


def test_beta_callable_gets_the_step_index_and_decaying_beta_is_a_running_mean() -> None:
    seen: list[int] = []

    def beta(t: int) -> float:
        seen.append(t)
        return [1.0, 0.5, 0.0][t]

    opt = BiasCorrectedWGA([_t(0.0)], [0.5, 0.5], lr=0.1, beta=beta)
    for g1 in (0.0, 4.0, 100.0):
        opt.step([[_t(2.0)], [_t(g1)]])
    assert seen == [0, 1, 2]
    # c: 0.5 * (2 - 0) = 1, then 0.5 * 1 + 0.5 * 0.5 * (2 - 4) = 0, then unchanged (beta 0)
    assert torch.equal(opt.corrections()[0][0], _t(0.0))

    schedule = decaying_beta(0.1)
    assert [schedule(t) for t in (0, 1, 3, 9, 10, 100)] == [1.0, 0.5, 0.25, 0.1, 0.1, 0.1]
    # With beta_t = 1 / (t + 1) (floor not reached), c_i is the mean of a_i (g_0 - g_i) so far.
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(8, 3, 5, generator=g, dtype=F64)
    opt = BiasCorrectedWGA([torch.zeros(5, dtype=F64)], [0.5, 0.25, 0.25], lr=0.1, beta=decaying_beta(0.01))
    for s in samples:
        opt.step([[s[0]], [s[1]], [s[2]]])
    for i in (1, 2):
        torch.testing.assert_close(
            opt.corrections()[i - 1][0], (0.25 * (samples[:, 0] - samples[:, i])).mean(0), rtol=1e-12, atol=1e-14
        )


def test_no_collaborators_is_plain_sgd_for_both_optimizers() -> None:
    for cls, extra in ((WeightedGradientAveraging, {}), (BiasCorrectedWGA, {"beta": 0.5})):
        x = [_t(1.0, -1.0)]
        cls(x, [1.0], lr=0.5, **extra).step([[_t(2.0, 2.0)]])
        assert torch.equal(x[0], _t(0.0, -2.0))


def test_state_dict_round_trips_with_corrections_and_schedule() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [[[torch.randn(4, generator=g), torch.randn(2, 3, generator=g)] for _ in range(3)] for _ in range(5)]
    params = [torch.zeros(4), torch.zeros(2, 3)]
    opt = BiasCorrectedWGA(params, [0.5, 0.3, 0.2], lr=0.2, beta=decaying_beta(0.05))
    for step in grads[:3]:
        opt.step(step)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    twins = [p.clone() for p in params]
    twin = BiasCorrectedWGA(twins, [1 / 3] * 3, lr=1.0, beta=0.9)
    twin.load_state_dict(saved)
    assert twin.param_groups[0]["weights"] == [0.5, 0.3, 0.2] and twin.param_groups[0]["lr"] == 0.2
    assert twin.state[twins[0]]["step"] == 3
    for step in grads[3:]:
        opt.step(step)
        twin.step(step)
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
    for ca, cb in zip(opt.corrections(), twin.corrections()):
        assert all(torch.equal(x, y) for x, y in zip(ca, cb))
    assert not all(torch.equal(c, torch.zeros_like(c)) for c in opt.corrections()[0])


def test_optimizer_argument_errors() -> None:
    p = [torch.zeros(2)]
    for weights, err, match in (
        ([0.5, 0.6], ValueError, "sum to 1"),
        ([], ValueError, "N \\+ 1 >= 1"),
        ([1.0, float("nan")], ValueError, r"weights\[1\]"),
        ([1.0, "0"], TypeError, r"weights\[1\]"),
        ("1", TypeError, "weights"),
        (torch.ones(1, 1), ValueError, "1-D"),
    ):
        with pytest.raises(err, match=match):
            WeightedGradientAveraging(p, weights, 0.1)  # type: ignore[arg-type]
    for lr, err in ((0.0, ValueError), (float("inf"), ValueError), (-1.0, ValueError), ("0.1", TypeError)):
        with pytest.raises(err, match="lr"):
            WeightedGradientAveraging(p, [1.0], lr)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="params is empty"):
        WeightedGradientAveraging([], [1.0], 0.1)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        WeightedGradientAveraging([{"params": p}], [1.0], 0.1)  # type: ignore[list-item]
    for beta, err in ((1.5, ValueError), (-0.1, ValueError), ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(err, match="beta"):
            BiasCorrectedWGA(p, [0.5, 0.5], 0.1, beta)  # type: ignore[arg-type]
    opt = WeightedGradientAveraging(p, [0.5, 0.5], 0.1)
    with pytest.raises(ValueError, match="N \\+ 1 = 2 gradient lists"):
        opt.step([[torch.zeros(2)]])
    with pytest.raises(ValueError, match=r"grads\[1\] must be a list of 1 tensors"):
        opt.step([[torch.zeros(2)], [torch.zeros(2), torch.zeros(2)]])
    with pytest.raises(TypeError, match="grads"):
        opt.step(torch.zeros(2, 2))  # type: ignore[arg-type]
    bad_schedule = BiasCorrectedWGA(p, [0.5, 0.5], 0.1, lambda t: 2.0)
    with pytest.raises(ValueError, match=r"beta\(0\)"):
        bad_schedule.step([[torch.zeros(2)], [torch.zeros(2)]])
    with pytest.raises(ValueError, match="floor"):
        decaying_beta(1.5)


# ---------------------------------------------------------------------------
# Weight helpers


def test_optimal_weights_reduce_to_the_collaborator_weight_for_one_collaborator() -> None:
    assert collaborator_weight(1.0, 2.0, 1.0) == 0.25
    for v0, v, b2 in ((1.0, 1.0, 0.0), (0.3, 2.0, 0.7), (5.0, 0.1, 3.0), (0.0, 1.0, 1.0)):
        a = optimal_weights([v0, v], torch.tensor([[0.0, 0.0], [0.0, b2]], dtype=F64))
        assert a.dtype == F64 and a.shape == (2,)
        assert float(a[1]) == pytest.approx(collaborator_weight(v0, v, b2), abs=1e-12)
        assert float(a.sum()) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="v0"):
        collaborator_weight(-1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="is 0"):
        collaborator_weight(0.0, 0.0, 0.0)


def test_optimal_weights_minimise_the_quadratic_form() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        n, d = 6, 4
        biases = torch.randn(n + 1, d, generator=g, dtype=F64)
        biases[0] = 0
        gram = biases @ biases.T
        variances = torch.rand(n + 1, generator=g, dtype=F64) * 3
        a = optimal_weights(variances, gram)
        M = torch.diag(variances) + gram
        best = float(a @ M @ a)
        # random feasible weights: random directions summing to zero, around a and around uniform
        for center in (a, torch.full((n + 1,), 1.0 / (n + 1), dtype=F64)):
            z = torch.randn(500, n + 1, generator=g, dtype=F64)
            trials = center + (z - z.mean(1, keepdim=True)) * torch.rand(500, 1, generator=g, dtype=F64)
            values = torch.einsum("ki,ij,kj->k", trials, M, trials)
            assert best <= float(values.min()) + 1e-12


def test_optimal_weights_can_be_negative_and_handle_a_noiseless_user_0() -> None:
    # Two low-noise collaborators biased in the same direction, one twice as far:
    # 2 * (first) - (second) cancels the bias, so the second gets a negative weight.
    a = optimal_weights([1.0, 0.01, 0.01], torch.tensor([[0.0, 0, 0], [0, 1.0, 2.0], [0, 2.0, 4.0]]))
    assert float(a[2]) < -0.5 and float(a[1]) > 1.0
    assert float(a.sum()) == pytest.approx(1.0, abs=1e-12)
    a = optimal_weights([0.0, 1.0, 2.0], torch.diag(_t(0.0, 0.5, 0.5)))
    torch.testing.assert_close(a, _t(1.0, 0.0, 0.0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="variances"):
        optimal_weights([1.0, -1.0], torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        optimal_weights([1.0, 1.0], torch.zeros(3, 3))
    with pytest.raises(ValueError, match="singular"):
        optimal_weights([0.0, 0.0], torch.zeros(2, 2))


def test_estimate_bias_variance_by_hand_and_on_synthetic_samples() -> None:
    samples = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [1.0, 3.0]]])  # (T=2, users=2, d=2)
    variances, gram = estimate_bias_variance(samples)
    assert variances.dtype == F64 and gram.dtype == F64
    torch.testing.assert_close(variances, _t(2.0, 2.0), rtol=0, atol=1e-15)  # means (1, 0) and (1, 2)
    torch.testing.assert_close(gram, torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=F64), rtol=0, atol=1e-15)

    g = torch.Generator().manual_seed(4)
    T, d = 20000, 5
    means = torch.tensor([[0.0] * d, [1.0, 0, 0, 0, 0], [0.0, 2.0, 0, 0, 1.0]], dtype=F64)
    sigmas = _t(1.0, 0.5, 2.0)
    draws = means + sigmas[:, None] * torch.randn(T, 3, d, generator=g, dtype=F64)
    variances, gram = estimate_bias_variance(draws)
    torch.testing.assert_close(variances, d * sigmas**2, rtol=0.03, atol=0)
    # the means' noise moves B_ij by about 2 ||b|| sqrt((v_0 + v_i) / T) ~ 0.07: a margin of 4 of those
    torch.testing.assert_close(gram, means @ means.T, rtol=0, atol=0.3)
    assert torch.equal(gram[0], torch.zeros(3, dtype=F64))
    for bad in (torch.zeros(1, 2, 3), torch.zeros(4, 3)):
        with pytest.raises(ValueError, match=r"\(T, N \+ 1, d\)"):
            estimate_bias_variance(bad)


# ---------------------------------------------------------------------------
# Simulator


def test_simulator_repeats_bit_for_bit_and_seeds_differ() -> None:
    pytest.importorskip(
        "sklearn", reason="the digits task's data set ships with scikit-learn (README set-up installs it)"
    )
    for cfg in (
        PersonalizedConfig(task="hessian", method="bias_corrected_decay", collaborators=3, rounds=300),
        PersonalizedConfig(task="digits", method="optimal", collaborators=2, rounds=40, eval_every=10),
    ):
        a, b = run_personalized(cfg), run_personalized(cfg)
        assert a["curve"] == b["curve"] and a["tail_error"] == b["tail_error"] and a["weights"] == b["weights"]
        c = run_personalized(PersonalizedConfig(**{**a["config"], "seed": 1}))
        assert c["curve"] != a["curve"]


def test_local_sgd_does_not_depend_on_the_collaborators() -> None:
    # user 0 draws its noise from its own generator: local runs repeat bit for bit across N
    runs = [
        run_personalized(PersonalizedConfig(method="local", collaborators=n, rounds=200, eval_every=20)) for n in (0, 3)
    ]
    assert runs[0]["curve"] == runs[1]["curve"]
    assert runs[1]["weights"] == [1.0, 0.0, 0.0, 0.0]
    # with N = 0 every method is local SGD
    wga = run_personalized(PersonalizedConfig(method="bias_corrected", collaborators=0, rounds=200, eval_every=20))
    assert wga["curve"] == runs[0]["curve"]


def test_simulator_result_fields_and_tail() -> None:
    pytest.importorskip(
        "sklearn", reason="the digits task's data set ships with scikit-learn (README set-up installs it)"
    )
    seen: list[int] = []
    r = run_personalized(
        PersonalizedConfig(method="wga", collaborators=2, rounds=60, eval_every=1),
        progress=lambda t, err: seen.append(t),
    )
    assert seen == list(range(61)) and [p["round"] for p in r["curve"]] == seen
    # tail = the last sixth (10 steps) of a 60-step run, every step
    assert r["tail_error"] == pytest.approx(sum(p["error"] for p in r["curve"][-10:]) / 10, rel=1e-12)
    assert r["final_error"] == r["curve"][-1]["error"]
    assert r["weights"] == [1 / 3] * 3 and r["dim"] == 20
    assert r["config"]["lr"] == 0.05 and r["config"]["rounds"] == 60
    assert set(r["seconds_per_step"]) == {"gradients", "step"} and all(v > 0 for v in r["seconds_per_step"].values())
    json.dumps(r)
    d = run_personalized(PersonalizedConfig(task="digits", method="local", collaborators=1, rounds=30, eval_every=10))
    assert d["config"]["lr"] == 1.0 and d["dim"] == 650
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in d["curve"]) and 0.0 <= d["tail_accuracy"] <= 1.0
    assert d["curve"][-1]["error"] < d["curve"][0]["error"]


# ---------------------------------------------------------------------------
# The effect the line exists for, on the quadratic task with 4 collaborators
# (6000 steps, lr 0.05, beta 0.002, tail = last 1000 steps). Measured on
# seeds 0-2: local SGD 0.47-0.55, uniform WGA 0.73-0.78 (its fixed point is
# 0.8 of the way to the collaborators' optima), optimal weights 0.35-0.37,
# bias correction 0.11-0.13. The thresholds keep wide margins.


@pytest.fixture(scope="module")
def quadratic_runs() -> dict[str, list[dict]]:
    methods = ("local", "wga", "optimal", "bias_corrected")
    return {
        m: [run_personalized(PersonalizedConfig(method=m, collaborators=4, seed=s)) for s in range(3)] for m in methods
    }


def test_bias_correction_ends_much_closer_to_user_0s_optimum(quadratic_runs: dict[str, list[dict]]) -> None:
    for wga, bc, local in zip(quadratic_runs["wga"], quadratic_runs["bias_corrected"], quadratic_runs["local"]):
        assert bc["tail_error"] < 0.3 * wga["tail_error"]
        assert bc["tail_error"] < 0.5 * local["tail_error"]
        assert wga["tail_error"] > local["tail_error"]


def test_wga_error_matches_the_predicted_bias_plus_variance(quadratic_runs: dict[str, list[dict]]) -> None:
    # Prediction a^T (lr / (2 - lr) diag(v) + B) a, the objective the optimal weights minimise.
    for method in ("wga", "optimal"):
        for r in quadratic_runs[method]:
            cfg = PersonalizedConfig(**r["config"])
            variances, gram = _Quadratic(cfg).variances_and_biases()
            a = torch.tensor(r["weights"], dtype=F64)
            predicted = float(a @ (0.05 / 1.95 * torch.diag(variances) + gram) @ a)
            assert r["tail_error"] == pytest.approx(predicted, rel=0.15)
    for opt, local, wga in zip(quadratic_runs["optimal"], quadratic_runs["local"], quadratic_runs["wga"]):
        assert opt["tail_error"] < 0.85 * min(local["tail_error"], wga["tail_error"])


# ---------------------------------------------------------------------------
# Grid report


def test_grid_configs_and_a_tiny_grid_report(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the grid plots with matplotlib (README set-up installs it)")
    from robustagg.sim import personalized_grid as grid

    configs = grid.grid_configs()
    assert len(configs) == 3 * 7 * 5 * 2 and all(c.rounds is None for c in configs)
    assert {(c.task, c.collaborators, c.method, c.seed) for c in configs} == {
        (t, n, m, s)
        for t in ("quadratic", "hessian", "digits")
        for n in (0, 1, 2, 4, 8, 16, 32)
        for m in ("local", "wga", "optimal", "bias_corrected", "bias_corrected_decay")
        for s in (0, 1)
    }
    assert {c.rounds for c in grid.grid_configs(1, rounds=50)} == {50}

    tiny = [
        PersonalizedConfig(method=m, collaborators=4, rounds=600, eval_every=100)
        for m in ("local", "wga", "bias_corrected")
    ]
    results = grid.run_grid(tiny, jobs=1)
    assert [r["config"]["method"] for r in results] == ["local", "wga", "bias_corrected"]
    text = grid.grid_markdown(results, "robustagg train personalized --grid", 12.0, 1, "test machine")
    assert text.startswith("# Personalized collaborative learning\n")
    assert "## Quadratic, identity Hessians" in text and "## Reading" not in text and "## Digits" not in text
    row = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[2] == "–" and cells[4] == "–"  # optimal and decaying beta: not run
    errors = [r["tail_error"] for r in results]
    best = [0, 1, 3][errors.index(min(errors))]
    assert [c.startswith("**") for c in cells] == [k == best for k in range(5)]
    assert f"bias correction / uniform WGA = {errors[2] / errors[1]:.2f}" in text
    paths = grid.grid_plots(results, str(tmp_path))
    assert paths == [str(tmp_path / "personalized.png")] and (tmp_path / "personalized.png").stat().st_size > 1000


# ---------------------------------------------------------------------------
# Command line


def test_train_personalized_command_writes_json_and_plot_at_the_default_paths(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("matplotlib", reason="the run plots with matplotlib (README set-up installs it)")
    from robustagg.cli import main

    monkeypatch.chdir(tmp_path)
    assert (
        main(("train personalized --task digits --method wga --collaborators 2 --rounds 60 --eval-every 20").split())
        == 0
    )
    result = json.loads((tmp_path / "runs" / "personalized-digits-wga-N2-s0.json").read_text())
    assert result["config"]["rounds"] == 60 and result["config"]["lr"] == 1.0  # the task's lr
    assert [p["round"] for p in result["curve"]] == [0, 20, 40, 60]
    assert result["command"].startswith("robustagg train personalized --task digits")
    assert (tmp_path / "runs" / "personalized-digits-wga-N2-s0.png").stat().st_size > 1000
    out, err = capsys.readouterr()
    assert "digits, wga: N = 2 collaborators, 60 steps, lr 1, seed 0" in out
    assert "weights: 0.333, 0.333, 0.333" in out and "user 0's error: final" in out
    assert "\r" not in err  # no progress bar redraws where stderr is not a terminal
