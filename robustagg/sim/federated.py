"""Federated simulator (SPEC 6.2) on digits or a data set from disk, on the CPU or a GPU.

Clients hold a Dirichlet(alpha) label split of the training set. Each round
the server samples ``per_round`` clients without replacement; they start at
the server point x and run local SGD-type steps on batches of their own
examples, all sampled clients at once (``torch.func.vmap`` over the clients'
points for the gradients, one native multi-tensor call per step for the
update); the :class:`~robustagg.optim.FederatedServer` averages their points
by example count. Clients with fewer local steps (``local_epochs``) drop out
of the later steps. With ``device="cuda"`` the data, the batch draws, the
gradients and the fused client and server steps stay on the GPU; which
clients take part is drawn on the host, from the seed, since the server's
bookkeeping is per client. Everything random comes from the seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..arguments import closed_unit_interval, nonnegative_float, option, positive_float, positive_int, unit_interval
from ..optim.federated import ALGORITHMS, BASES, FederatedServer
from ..timing import Stopwatch
from ..validation import check_choice, check_int, check_positive, check_real
from . import config as shared
from .data import (
    Dataset,
    augment,
    check_batch,
    check_fits,
    load_data,
    parse_split,
    split_workers,
    train_examples,
)
from .models import MODELS, Model, curve_point, make_model

__all__ = ["FederatedConfig", "run_federated", "LOSS_ROUNDS"]

# Rounds at which the training loss is reported (those within the run).
LOSS_ROUNDS = (25, 50, 100, 150)


@dataclass(frozen=True)
class FederatedConfig:
    """One federated run; ``local_epochs`` > 0 replaces ``local_steps`` by ceil(epochs * n_i / batch) per client."""

    algo: str = option("mime", "algorithm", choices=ALGORITHMS)
    base: str = option("sgdm", "base optimizer of the Mime family", choices=BASES)
    clients: int = option(100, "clients", type=positive_int)
    per_round: int = option(10, "clients sampled per round", type=positive_int)
    alpha: float = option(0.1, "Dirichlet concentration of the label split", type=positive_float)
    local_steps: int = option(10, "local steps per round", type=positive_int)
    local_epochs: float = option(
        0.0,
        "local epochs instead of steps: ceil(epochs * n_i / batch) steps for client i (default: use --local-steps)",
        type=nonnegative_float,
    )
    batch: int = shared.batch(16, "local batch size")
    lr: float = shared.lr(0.05, "client learning rate (default %(default)s; 0.005 suits base adam)")
    server_lr: float = option(1.0, "server learning rate", type=positive_float)
    beta: float = option(0.9, "momentum / Adam beta1", type=unit_interval)
    beta2: float = option(0.999, "Adam beta2", type=unit_interval)
    eps: float = 1e-8
    mvr_a: float = option(0.1, "MVR weight a", type=closed_unit_interval)
    server_momentum: float = shared.momentum(0.9, "FedAvgM server momentum")
    rounds: int = shared.rounds(150, "rounds")
    model: str = shared.model()
    hidden: int = shared.hidden(64)
    seed: int = shared.seed("the split, initialisation, sampling and batches")
    eval_every: int = shared.eval_every(1)
    data: str = shared.data()
    device: str = shared.device()

    def check(self, examples: int | None = None) -> None:
        """Raise ValueError (TypeError for a field of the wrong type) naming the first bad field; ``examples``
        as in :meth:`ByzantineConfig.check <robustagg.sim.byzantine.ByzantineConfig.check>`."""
        where = "federated"
        check_choice(self.algo, ALGORITHMS, "algo", where)
        check_choice(self.base, BASES, "base", where)
        examples = train_examples(self.data, examples)
        clients = check_int(self.clients, "clients", where, low=1, high=examples)
        if not 1 <= check_int(self.per_round, "per_round", where) <= clients:
            raise ValueError(
                f"federated: need 1 <= per_round <= clients, got per_round={self.per_round}, clients={clients}"
            )
        for name in ("local_steps", "rounds", "eval_every"):
            check_int(getattr(self, name), name, where, low=1)
        check_batch(self.batch, where, examples)
        check_real(self.local_epochs, "local_epochs", where, low=0.0)
        for name in ("lr", "server_lr", "eps"):
            check_positive(getattr(self, name), name, where)
        for name in ("beta", "beta2", "server_momentum"):
            check_real(getattr(self, name), name, where, 0.0, 1.0, high_open=True)
        check_real(self.mvr_a, "mvr_a", where, 0.0, 1.0)
        check_int(self.seed, "seed", where, low=0)
        check_choice(self.model, MODELS, "model", where)
        check_int(self.hidden, "hidden", where, low=1)
        shared.check_device(self.device, where)
        alpha = check_real(self.alpha, "alpha", where, allow_inf=True)  # its range is the split's to state
        parse_split(f"dirichlet:{alpha}")


def _first_round_reaching(curve: list[dict], level: float) -> int | None:
    return next((p["round"] for p in curve if p["test_accuracy"] >= level), None)


def run_federated(
    cfg: FederatedConfig,
    progress: Callable[[int, float], None] | None = None,
    *,
    model: Model | None = None,
    data: Dataset | None = None,
) -> dict:
    """Train and return a JSON-ready dict: config, per-round curve, summary figures and timings.

    The run evaluates every ``eval_every`` rounds and at the last. Summary: final test accuracy, mean
    test accuracy of the evaluations in the last 10% of the rounds, the first evaluated round reaching
    90% and 95% test accuracy (None if never), and the training loss at the rounds of ``LOSS_ROUNDS``
    that were evaluated and at the last round.
    ``model`` replaces the built-in ``cfg.model``, ``data`` the data set ``cfg.data`` names.
    """
    cfg.check(None if data is None else len(data.y_train))
    device = shared.use_device(cfg.device, "federated")
    data = load_data(cfg.data) if data is None else data
    check_fits(data, "federated", clients=cfg.clients, batch=cfg.batch)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    shares = split_workers(data.y_train, cfg.clients, f"dirichlet:{cfg.alpha}", rng)
    sizes = torch.tensor([len(s) for s in shares])
    if model is None:
        model = make_model(cfg.model, data.shape, data.num_classes, cfg.hidden)
    w = model.init(gen).to(device)
    # The clients are drawn on the host; on the CPU the batches continue that stream, on a GPU they are drawn there.
    batches = gen if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    shares = [s.to(device) for s in shares]
    data = data.to(device)
    loss_x, loss_y = data.train_loss_examples()
    server = FederatedServer(
        [w],
        cfg.algo,
        cfg.base,
        cfg.server_lr,
        cfg.beta,
        cfg.beta2,
        cfg.eps,
        cfg.mvr_a,
        cfg.server_momentum,
        num_clients=cfg.clients,
    )
    client_grads = torch.func.vmap(torch.func.grad(model.loss), in_dims=(0, 0, 0))
    anchor_grads = torch.func.vmap(torch.func.grad(model.loss), in_dims=(None, 0, 0))
    full_grad = torch.func.grad(model.loss)

    # Untimed warm-up of the three gradient functions (vmap traces on first use).
    xb, yb = data.x_train[: 2 * cfg.batch].view(2, cfg.batch, -1), data.y_train[: 2 * cfg.batch].view(2, cfg.batch)
    client_grads(w.expand(2, -1), xb, yb), anchor_grads(w, xb, yb), full_grad(w, xb[0], yb[0])

    clock = Stopwatch(device, "gradients", "client_steps", "server")
    curve: list[dict] = []
    wall = time.perf_counter()
    for t in range(1, cfg.rounds + 1):
        chosen = torch.randperm(cfg.clients, generator=gen)[: cfg.per_round].tolist()
        counts = [int(sizes[i]) for i in chosen]
        clock.restart()
        full = prev = None
        if server.needs_full_grads:
            full = [[full_grad(w, data.x_train[shares[i]], data.y_train[shares[i]])] for i in chosen]
            if server.is_mvr and server.previous is not None:
                prev = [
                    [full_grad(server.previous[0], data.x_train[shares[i]], data.y_train[shares[i]])] for i in chosen
                ]
        clock.lap("gradients")
        server.begin_round(full, counts, prev)
        clock.lap("server")

        steps = [
            cfg.local_steps if cfg.local_epochs == 0 else max(1, math.ceil(cfg.local_epochs * n / cfg.batch))
            for n in counts
        ]
        Y = w.detach().expand(len(chosen), -1).clone()
        for k in range(max(steps)):
            active = [j for j, s in enumerate(steps) if s > k]
            pick = torch.stack(
                [
                    shares[chosen[j]][torch.randint(counts[j], (cfg.batch,), generator=batches, device=device)]
                    for j in active
                ]
            )
            xb, yb = augment(data.x_train[pick], data, batches), data.y_train[pick]
            gy = client_grads(Y[active], xb, yb)
            gx = anchor_grads(w, xb, yb) if server.needs_anchor_grads else None
            clock.lap("gradients")
            rows = [Y[j] for j in active]
            server.client_step(rows, list(gy), cfg.lr, None if gx is None else list(gx), [chosen[j] for j in active])
            clock.lap("client_steps")
        for j, i in enumerate(chosen):
            server.add_client([Y[j]], counts[j], client_id=i, local_steps=steps[j], lr=cfg.lr)
        server.end_round()
        clock.lap("server")

        if t % cfg.eval_every == 0 or t == cfg.rounds:
            curve.append(curve_point(model, w, t, (data.x_test, data.y_test), (loss_x, loss_y)))
            if progress is not None:
                progress(t, curve[-1]["test_accuracy"])
    wall = time.perf_counter() - wall
    tail = [p for p in curve if p["round"] > cfg.rounds - max(1, cfg.rounds // 10)]
    at = {p["round"]: p for p in curve}
    return {
        "config": asdict(cfg),
        "model": model.name,
        "dim": model.dim,
        "final_test_accuracy": curve[-1]["test_accuracy"],
        "tail_test_accuracy": sum(p["test_accuracy"] for p in tail) / len(tail),
        "rounds_to_90": _first_round_reaching(curve, 0.90),
        "rounds_to_95": _first_round_reaching(curve, 0.95),
        "train_loss_at": {str(r): at[r]["train_loss"] for r in sorted({*LOSS_ROUNDS, cfg.rounds}) if r in at},
        "curve": curve,
        "seconds_per_round": clock.per(cfg.rounds),
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
