"""Federated optimisation: Mime, MimeLite, their MVR variants, and FedAvg /
FedAvgM / SCAFFOLD baselines (SPEC 6.2).

Mime (Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich, Suresh, "Mime:
Mimicking Centralized Stochastic Algorithms in Federated Learning", NeurIPS
2021) runs the clients' local steps with the server optimizer's statistics s
frozen. A base optimizer is a pair (U, V): a client step is
``y <- y - lr * U(g~, s)``, the server updates ``s <- V(c, s)`` once per
round with ``c``, the full-batch gradient at the server point x over the
round's clients (example-weighted mean). MimeLite uses ``g~ = grad f_i(y;
batch)``; Mime adds an SVRG correction, ``g~ = grad f_i(y; batch) - grad
f_i(x; batch) + c`` (the same batch at both points). The server point moves to
the example-weighted mean of the clients' points, scaled by a server learning
rate: ``x <- x - server_lr * sum_i n_i (x - y_i) / sum_i n_i``.

Base optimizers:

* ``sgd``:  ``U(g, s) = g``, no statistics.
* ``sgdm``: ``U(g, m) = V(g, m) = (1 - beta) g + beta m``. m starts at the
  first round's c, set before that round's client steps (as
  :class:`torch.optim.SGD`'s momentum buffer starts at the first gradient):
  from zero, the first rounds' steps would shrink by the factor 1 - beta.
* ``adam``: s = (m, v, t); V is Adam's moment update, U the step Adam would
  take from s with gradient g without writing s (torch.optim.Adam's
  arrangement with bias correction at t + 1).
* MVR (``mimelitemvr``, ``mimemvr``; the base is ignored). A derivation of
  ours from momentum-based variance reduction (Cutkosky & Orabona, NeurIPS
  2019), not spelled out in the paper: at the start of each round the
  statistic becomes ``m <- a c + (1 - a) ((m + c) - c_prev)``, ``c_prev`` the
  full-batch gradient at the previous server point over the same clients'
  examples (first round: ``m = c``), so that m estimates the gradient at x;
  a client step is the STORM step from the frozen point x,
  ``U = a g~ + (1 - a) (m + grad f_i(y; batch) - grad f_i(x; batch))``.

Baselines: FedAvg (clients run SGD), FedAvgM (server momentum
``v <- beta_s v + delta; x <- x - server_lr v``, Hsu, Qi, Brown 2019), and
SCAFFOLD option II (Karimireddy et al., ICML 2020): client steps
``y <- y - lr (g - c_i + c)``, then ``c_i <- c_i - c + (x - y_i) / (K lr)``
after K local steps, ``c <- c + (1/N) sum_{i in S} (c_i^new - c_i)`` over
the N clients, and ``x <- x - server_lr * delta``.

Every client step is one native multi-tensor call (``client_step_`` or
``adam_client_step_``) that reads the frozen statistics and writes only the
client's parameters; the statistics updates are ``momentum_update_``,
``adam_stats_update_`` and ``mvr_update_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from .. import ops
from ..validation import (
    check_choice,
    check_counts,
    check_int,
    check_positive,
    check_real,
    check_tensor_list,
    check_tensors,
)

__all__ = ["ALGORITHMS", "BASES", "FederatedServer", "ClientOptimizer"]

ALGORITHMS = ("fedavg", "fedavgm", "scaffold", "mimelite", "mime", "mimelitemvr", "mimemvr")
BASES = ("sgd", "sgdm", "adam")

Params = list[torch.Tensor]


def _zeros(params: Sequence[torch.Tensor]) -> Params:
    return [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]


class FederatedServer:
    """Holds the server point x (``params``, updated in place) and the algorithm's statistics.

    A round, from any training loop::

        server.begin_round(full_grads, counts)          # Mime family: gradients at x (and MVR: at server.previous)
        for each sampled client i:
            y = copy of x;  opt = server.client_optimizer(y, lr, client_id=i)
            for each local step: compute y's gradient (and, for Mime / MVR, x's on the same batch);
                                 opt.step(anchor_grads=grads_at_x)
            server.add_client(y, n_i, client_id=i, local_steps=K, lr=lr)
        server.end_round()

    ``full_grads`` is one gradient list (shaped like ``params``) per sampled
    client, each the mean gradient over that client's examples at x;
    ``counts`` the clients' example counts (the weights of every average).
    MVR also needs ``prev_full_grads``, the same at :attr:`previous`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        algo: str = "mime",
        base: str = "sgdm",
        server_lr: float = 1.0,
        beta: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        mvr_a: float = 0.1,
        server_momentum: float = 0.9,
        num_clients: int | None = None,
    ) -> None:
        check_choice(algo, ALGORITHMS, "algo", "FederatedServer")
        check_choice(base, BASES, "base", "FederatedServer")
        rule = "FederatedServer"
        # a = 1 makes MVR plain SGD; a momentum of 1 would never take a gradient.
        self.beta = check_real(beta, "beta", rule, 0.0, 1.0, high_open=True)
        self.beta2 = check_real(beta2, "beta2", rule, 0.0, 1.0, high_open=True)
        self.server_momentum = check_real(server_momentum, "server_momentum", rule, 0.0, 1.0, high_open=True)
        self.mvr_a = check_real(mvr_a, "mvr_a", rule, 0.0, 1.0)
        if algo == "scaffold" and num_clients is None:
            raise ValueError("FederatedServer: scaffold needs num_clients (the N in c <- c + |S|/N mean(delta c_i))")
        self.num_clients = None if num_clients is None else check_int(num_clients, "num_clients", rule, low=1)
        self.params = check_tensors(params, "params", rule)
        self.algo, self.base = algo, base
        self.server_lr = check_positive(server_lr, "server_lr", rule)
        self.eps = check_positive(eps, "eps", rule)
        self.rounds = 0
        # Statistics of the Mime family, the server momentum of FedAvgM, SCAFFOLD's controls.
        self.momentum: Params | None = _zeros(self.params) if self._uses_momentum else None
        self.exp_avg_sq: Params | None = _zeros(self.params) if self._uses_adam else None
        self.velocity: Params | None = _zeros(self.params) if algo == "fedavgm" else None
        self.control: Params | None = _zeros(self.params) if algo == "scaffold" else None
        self.client_controls: dict[object, Params] = {}
        self.previous: Params | None = None  # x of the previous round (MVR)
        self.full_grad: Params | None = None  # c of this round
        self._delta: Params | None = None
        self._weight = 0.0
        self._control_delta: Params | None = None

    # -- what the algorithm needs -------------------------------------------------

    @property
    def is_mime(self) -> bool:
        return self.algo.startswith("mime")

    @property
    def is_mvr(self) -> bool:
        return self.algo.endswith("mvr")

    @property
    def _uses_adam(self) -> bool:
        return self.is_mime and not self.is_mvr and self.base == "adam"

    @property
    def _uses_momentum(self) -> bool:
        return self.is_mime and (self.is_mvr or self.base in ("sgdm", "adam"))

    @property
    def needs_full_grads(self) -> bool:
        """Whether :meth:`begin_round` needs the clients' full-batch gradients at x."""
        return self.is_mime

    @property
    def needs_anchor_grads(self) -> bool:
        """Whether client steps need the gradient at x on the same batch (Mime and the MVR variants)."""
        return self.algo in ("mime", "mimemvr", "mimelitemvr")

    # -- a round -------------------------------------------------------------------

    @torch.no_grad()
    def begin_round(
        self,
        full_grads: Sequence[Sequence[torch.Tensor]] | None = None,
        counts: Sequence[float] | None = None,
        prev_full_grads: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> None:
        """Start a round: ``c`` from the clients' full-batch gradients at x (Mime family); MVR refreshes m.

        Every list and count is checked before anything is written: a refused
        call leaves the statistics and the round as they were.
        """
        if self.needs_full_grads:
            if full_grads is None or counts is None:
                raise ValueError(f"FederatedServer: {self.algo} needs full_grads and counts of the round's clients")
            counts = check_counts(counts, "counts", "FederatedServer")
            self._check_grads(full_grads, "full_grads", len(counts))
            mvr_step = self.is_mvr and self.rounds > 0
            if mvr_step:
                if prev_full_grads is None:
                    raise ValueError(
                        "FederatedServer: MVR needs prev_full_grads, the clients' gradients at server.previous"
                    )
                self._check_grads(prev_full_grads, "prev_full_grads", len(counts))
        self._delta = _zeros(self.params)
        self._weight = 0.0
        self._control_delta = _zeros(self.params) if self.algo == "scaffold" else None
        if not self.needs_full_grads:
            return
        self.full_grad = self._weighted_mean(full_grads, counts)
        if self.is_mvr or self.base == "sgdm":
            if self.rounds == 0:
                for m, c in zip(self.momentum, self.full_grad):
                    m.copy_(c)
            elif mvr_step:
                ops.mvr_update_(self.momentum, self.full_grad, self._weighted_mean(prev_full_grads, counts), self.mvr_a)

    def _check_grads(self, grads: object, name: str, clients: int) -> None:
        """One gradient list shaped like ``params`` for each of the round's clients."""
        if isinstance(grads, (str, bytes, torch.Tensor)) or not isinstance(grads, Sequence) or len(grads) != clients:
            got = f"{len(grads)} lists" if isinstance(grads, Sequence) else type(grads).__name__
            raise ValueError(f"FederatedServer: {name} must hold one gradient list per count ({clients}), got {got}")
        for i, g in enumerate(grads):
            check_tensor_list(g, self.params, f"{name}[{i}]", "FederatedServer")

    def client_optimizer(self, params: Iterable[torch.Tensor], lr: float, client_id: object = None) -> ClientOptimizer:
        """A :class:`torch.optim.Optimizer` for one client's local steps this round."""
        return ClientOptimizer(params, self, lr, client_id)

    @torch.no_grad()
    def client_step(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        lr: float,
        anchor_grads: Sequence[torch.Tensor] | None = None,
        client_ids: Sequence[object] | None = None,
    ) -> None:
        """One local step of k clients at once: ``params`` and ``grads`` hold k lists shaped like the server's, concatenated.

        ``anchor_grads``: the gradients at x on the same batches (Mime, MVR).
        ``client_ids``: the k clients (SCAFFOLD's control variates).
        """
        lr = check_positive(lr, "lr", "FederatedServer")
        k, rem = divmod(len(params), len(self.params))
        if rem or k == 0 or len(grads) != len(params):
            raise ValueError(
                f"FederatedServer: params and grads must hold whole copies of the {len(self.params)} server tensors"
            )
        if self.needs_anchor_grads and (anchor_grads is None or len(anchor_grads) != len(params)):
            raise ValueError(
                f"FederatedServer: {self.algo} client steps need anchor_grads (gradients at x on the same batch)"
            )
        if self._uses_adam:
            kwargs = {"anchor_grads": anchor_grads, "control": self.full_grad * k} if self.algo == "mime" else {}
            ops.adam_client_step_(
                params,
                grads,
                self.momentum * k,
                self.exp_avg_sq * k,
                lr,
                self.beta,
                self.beta2,
                self.eps,
                self.rounds + 1,
                **kwargs,
            )
            return
        coefs, lists = self._client_terms(k, anchor_grads, client_ids)
        ops.client_step_(params, grads, lr, **lists, **coefs)

    def _client_terms(self, k: int, anchor_grads, client_ids) -> tuple[dict, dict]:
        beta = self.beta if self.base == "sgdm" else 0.0
        a = self.mvr_a
        if self.algo in ("fedavg", "fedavgm"):
            return {}, {}
        if self.algo == "scaffold":
            if client_ids is None or len(client_ids) != k:
                raise ValueError("FederatedServer: scaffold client steps need one client id per client")
            controls = [t for cid in client_ids for t in self._client_control(cid)]
            return {"coef_anchor": -1.0, "coef_control": 1.0}, {"anchor_grads": controls, "control": self.control * k}
        if self.algo == "mimelite":
            if beta == 0.0:
                return {}, {}
            return {"coef_grad": 1.0 - beta, "coef_momentum": beta}, {"momentum": self.momentum * k}
        if self.algo == "mime":
            coefs = {"coef_grad": 1.0 - beta, "coef_anchor": -(1.0 - beta), "coef_control": 1.0 - beta}
            lists = {"anchor_grads": anchor_grads, "control": self.full_grad * k}
            if beta > 0.0:
                coefs["coef_momentum"] = beta
                lists["momentum"] = self.momentum * k
            return coefs, lists
        if self.algo == "mimelitemvr":
            return (
                {"coef_grad": 1.0, "coef_anchor": -(1.0 - a), "coef_momentum": 1.0 - a},
                {"anchor_grads": anchor_grads, "momentum": self.momentum * k},
            )
        return (
            {"coef_grad": 1.0, "coef_anchor": -1.0, "coef_control": a, "coef_momentum": 1.0 - a},
            {"anchor_grads": anchor_grads, "control": self.full_grad * k, "momentum": self.momentum * k},
        )

    def _client_control(self, client_id: object) -> Params:
        if client_id not in self.client_controls:
            self.client_controls[client_id] = _zeros(self.params)
        return self.client_controls[client_id]

    @torch.no_grad()
    def add_client(
        self,
        params: Sequence[torch.Tensor],
        count: float,
        client_id: object = None,
        local_steps: int | None = None,
        lr: float | None = None,
    ) -> None:
        """Add one client's final point y_i with weight ``count``; SCAFFOLD also needs its id, local steps and lr."""
        if self._delta is None:
            raise RuntimeError("FederatedServer: call begin_round() before add_client()")
        params = list(params)
        if len(params) != len(self.params):
            raise ValueError(
                f"FederatedServer: a client returned {len(params)} tensors, the server holds {len(self.params)}"
            )
        check_tensor_list(params, self.params, "params", "FederatedServer", "server.params")
        count = check_positive(count, "count", "FederatedServer")
        if self.algo == "scaffold":  # checked before the round's sums take this client in
            if local_steps is None or lr is None:
                raise ValueError("FederatedServer: scaffold's add_client needs client_id, local_steps >= 1 and lr")
            local_steps = check_int(local_steps, "local_steps", "FederatedServer", low=1)
            lr = check_positive(lr, "lr", "FederatedServer")
        diff = torch._foreach_sub(self.params, params)  # x - y_i
        torch._foreach_add_(self._delta, diff, alpha=count)
        self._weight += count
        if self.algo == "scaffold":
            c_i = self._client_control(client_id)
            # c_i+ = c_i - c + (x - y_i) / (K lr); accumulate c_i+ - c_i.
            new = torch._foreach_sub(c_i, self.control)
            torch._foreach_add_(new, diff, alpha=1.0 / (local_steps * lr))
            torch._foreach_add_(self._control_delta, torch._foreach_sub(new, c_i))
            for old, value in zip(c_i, new):
                old.copy_(value)

    @torch.no_grad()
    def end_round(self) -> None:
        """Update the statistics with c (SGDm, Adam) and move x by the example-weighted mean step."""
        if self._delta is None or self._weight == 0.0:
            raise RuntimeError("FederatedServer: end_round() needs begin_round() and at least one add_client()")
        delta = torch._foreach_div(self._delta, self._weight)
        if self.is_mime and not self.is_mvr:
            if self.base == "sgdm":
                ops.momentum_update_(self.momentum, self.full_grad, self.beta)
            elif self.base == "adam":
                ops.adam_stats_update_(self.momentum, self.exp_avg_sq, self.full_grad, self.beta, self.beta2)
        if self.is_mvr:
            self.previous = [p.detach().clone() for p in self.params]
        if self.algo == "fedavgm":
            torch._foreach_mul_(self.velocity, self.server_momentum)
            torch._foreach_add_(self.velocity, delta)
            delta = self.velocity
        if self.algo == "scaffold":
            torch._foreach_add_(self.control, self._control_delta, alpha=1.0 / self.num_clients)
        torch._foreach_add_(self.params, delta, alpha=-self.server_lr)
        self.rounds += 1
        self._delta = None

    @staticmethod
    def _weighted_mean(grads: Sequence[Sequence[torch.Tensor]], counts: list[float]) -> Params:
        """The counts-weighted mean of the gradient lists (both checked by the caller)."""
        total = math.fsum(counts)
        out = _zeros(grads[0])
        for g, n in zip(grads, counts):
            torch._foreach_add_(out, [t.detach() for t in g], alpha=float(n) / total)
        return out


class ClientOptimizer(torch.optim.Optimizer):
    """One client's local optimizer for one round; a :class:`torch.optim.Optimizer`.

    :meth:`step` reads each parameter's ``.grad`` (the gradient at the client
    point y) and, for Mime and the MVR variants, ``anchor_grads``: the
    gradient at the server point x on the same batch, in the parameters'
    order. It reads the server's frozen statistics and writes only the
    parameters (one native multi-tensor call). A parameter without a gradient
    steps with a zero gradient.
    """

    def __init__(
        self, params: Iterable[torch.Tensor], server: FederatedServer, lr: float, client_id: object = None
    ) -> None:
        super().__init__(params, {"lr": check_positive(lr, "lr", "ClientOptimizer")})
        self.server = server
        self.client_id = client_id
        self.steps = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, anchor_grads: Sequence[torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        ids = None if self.client_id is None else [self.client_id]
        self.server.client_step(
            params,
            grads,
            self.param_groups[0]["lr"],
            anchor_grads=anchor_grads,
            client_ids=ids if self.server.algo == "scaffold" else None,
        )
        self.steps += 1
        return loss
