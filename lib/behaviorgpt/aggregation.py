"""Multi-task gradient aggregation that gives the same update on 1 process or on N ranks.

Every strategy turns the task losses of one step into task weights `w` ([tasks]); the step
then follows the gradient of `sum_i w_i * L_i` with `w` held constant. Strategies differ in
what the weights are computed from:

- loss-based: `fixed` (configured weights), `uncertainty` (Kendall et al. 2018, learned
  log-variances), `dwa` (Liu et al. 2019, ratio of the last two epoch losses), `famo`
  (Liu et al. 2023, weights learned from the change of log losses). They read only the task
  loss values.
- Gramian-based: `pcgrad`, `cagrad`, `upgrad`, `mgda`, `dualproj`, `imtlg`, `aligned_mtl`,
  `mean`. They read the Gramian `G[i, j] = <g_i, g_j>` of the task gradients `g_i` taken at the
  shared representation (the backbone's output), and the torchjd weighting of each method maps
  `G` to `w`. The shared parameters then receive `backprop(sum_i w_i g_i)`, which is the
  method's combined vector expressed through the chain rule (the "gradient at the shared
  representation" form of MGDA-UB, Sener and Koltun 2018).

Exactness under data parallelism. Each rank holds a disjoint part of the global batch, and a
task loss is `L_i = (sum of per-target losses over all ranks) / (global target count)`, so
each rank computes its share `L_i^r` (its sum over the global count) and `L_i = sum_r L_i^r`.
Then:

- the loss values are all-reduced (sum, `tasks` floats), so loss-based weights are computed
  from the global losses, identically on every rank;
- the representation of rank r only feeds `L_i^r`, so the global Gramian is the sum of the
  rank Gramians: all-reducing `tasks x tasks` floats gives it exactly;
- with `w` the same on every rank, the final gradient `sum_r grad(sum_i w_i L_i^r)` is linear
  in the ranks' contributions, so one summed all-reduce of the parameter gradients (`n`
  floats, the same volume as DDP's own averaging) gives the one-process gradient.

Communication per step: `n + tasks**2 + 2 * tasks` floats (plus `tasks * n_shared` on
diagnostic steps). The alternative, all-reducing each task's gradient on the shared
parameters before aggregating, needs `tasks * n_shared + n_heads` floats and one backward pass
through the backbone per task; it is exact too but costs about `tasks` times more in both
communication and backward compute. `docs/model.md` gives the numbers for the default model.

Strategies that need randomness (PCGrad's task order) draw it from a generator seeded by the
step number, so every rank and a one-process run draw the same numbers.

This module knows nothing of heads or data: it works on loss tensors, one representation
tensor and parameter lists.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchjd.aggregation import (AlignedMTLWeighting, DualProjWeighting, IMTLGWeighting,
                                 MeanWeighting, MGDAWeighting, PCGradWeighting, UPGradWeighting)
from torchjd.linalg import DualConeProjector

LOSS_STRATEGIES = ("fixed", "uncertainty", "dwa", "famo")
GRAMIAN_STRATEGIES = ("pcgrad", "cagrad", "upgrad", "mgda", "dualproj", "imtlg", "aligned_mtl",
                      "mean")
STRATEGIES = LOSS_STRATEGIES + GRAMIAN_STRATEGIES


# ----------------------------------------------------------------------------------------------
# Strategies: losses or Gramian -> task weights.


class Strategy(nn.Module):
    """Maps one step's global task losses (and Gramian, when `needs_gramian`) to task weights.

    Subclasses with learnable state keep it in `nn.Parameter`s (trained by the model's
    optimizer from `auxiliary_loss`) or in plain tensors updated by `observe`. Every input is
    the same on every rank, so every rank computes the same weights and state.
    """

    needs_gramian = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        """Return the weights `[tasks]` for the global task losses `[tasks]` (detached)."""
        raise NotImplementedError

    def auxiliary_loss(self, losses: Tensor) -> Tensor | None:
        """Return a loss over the strategy's own parameters, or None if it has none."""
        return None

    def observe(self, losses: Tensor) -> None:
        """Update internal state after an optimizer step with that step's global losses."""

    def end_epoch(self) -> None:
        """Update internal state at the end of an epoch."""

    def get_state(self) -> dict[str, Tensor]:
        """Return every tensor a resumed run needs to continue this strategy exactly.

        The base version returns the module's state dict (parameters and persistent
        buffers) under `module.`; subclasses add the plain tensors that `observe` and
        `end_epoch` update.
        """
        return {f"module.{name}": tensor.detach().clone()
                for name, tensor in self.state_dict().items()}

    def set_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `get_state` returned."""
        module_state = {name.removeprefix("module."): tensor for name, tensor in state.items()
                        if name.startswith("module.")}
        self.load_state_dict(module_state, strict=True)


class FixedWeights(Strategy):
    """Constant configured weights."""

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__(len(weights))
        self.register_buffer("fixed", torch.tensor(list(weights), dtype=torch.float32),
                             persistent=False)

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        return self.fixed.to(losses)


class UncertaintyWeights(Strategy):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    Total loss `sum_i exp(-s_i) L_i + s_i` with learned `s_i = log sigma_i^2`, the form the
    paper uses for classification losses. The weights are `exp(-s_i)`. `s` is trained from the
    global losses, so it needs no all-reduce of its own.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_variance = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        return torch.exp(-self.log_variance.detach()).to(losses)

    def auxiliary_loss(self, losses: Tensor) -> Tensor:
        return (torch.exp(-self.log_variance) * losses.detach().to(self.log_variance)
                + self.log_variance).sum()


class DynamicWeightAverage(Strategy):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019).

    `w_i = tasks * softmax(r / T)_i` with `r_i` the ratio of task i's mean loss in the last
    two epochs; the first two epochs use weight 1 for every task.
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        self.temperature = temperature
        self.epoch_sum = torch.zeros(num_tasks, dtype=torch.float64)
        self.epoch_steps = 0
        self.history: list[Tensor] = []

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        if len(self.history) < 2:
            return torch.ones(self.num_tasks, dtype=losses.dtype, device=losses.device)
        ratio = self.history[-1] / self.history[-2].clamp(min=1e-12)
        return (self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)).to(losses)

    def observe(self, losses: Tensor) -> None:
        self.epoch_sum += losses.detach().double().cpu()
        self.epoch_steps += 1

    def end_epoch(self) -> None:
        if self.epoch_steps:
            self.history = [*self.history[-1:], self.epoch_sum / self.epoch_steps]
        self.epoch_sum = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.epoch_steps = 0

    def get_state(self) -> dict[str, Tensor]:
        history = (torch.stack(self.history) if self.history
                   else torch.zeros(0, self.num_tasks, dtype=torch.float64))
        return {**super().get_state(), "epoch_sum": self.epoch_sum.clone(),
                "epoch_steps": torch.tensor(self.epoch_steps, dtype=torch.int64),
                "history": history}

    def set_state(self, state: dict[str, Tensor]) -> None:
        super().set_state(state)
        self.epoch_sum = state["epoch_sum"].to(torch.float64).cpu().clone()
        self.epoch_steps = int(state["epoch_steps"])
        self.history = [row.clone() for row in state["history"].to(torch.float64).cpu()]


class FastAdaptiveMultitask(Strategy):
    """FAMO (Liu, Liang, Mu, Stone and Liu, NeurIPS 2023).

    Task logits `xi`, `z = softmax(xi)`. The step descends `sum_i z_i log L_i / c` with
    `c = sum_j z_j / L_j`, so the weight on `L_i` is `z_i / (c L_i)` (they sum to 1 over the
    loss scale). After the step, `xi` moves along `-J_softmax^T delta` with
    `delta_i = log L_i(before) - log L_i(after)`, by Adam with weight decay.

    NOTE: the paper measures `L(after)` on the same batch with an extra forward pass; this
    uses the next step's global losses instead (a different batch, no extra compute).
    """

    def __init__(self, num_tasks: int, learning_rate: float = 0.025,
                 weight_decay: float = 1e-3) -> None:
        super().__init__(num_tasks)
        self.logits = torch.zeros(num_tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=learning_rate,
                                          weight_decay=weight_decay)
        self.previous_losses: Tensor | None = None

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        z = torch.softmax(self.logits.detach(), dim=0).to(losses)
        safe = losses.detach().clamp(min=1e-8)
        return z / safe / (z / safe).sum()

    def observe(self, losses: Tensor) -> None:
        current = losses.detach().double().cpu().clamp(min=1e-8)
        if self.previous_losses is not None:
            delta = (self.previous_losses.log() - current.log()).float()
            with torch.enable_grad():
                z = torch.softmax(self.logits, dim=0)
                (gradient,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
            self.optimizer.zero_grad(set_to_none=True)
            self.logits.grad = gradient
            self.optimizer.step()
        self.previous_losses = current

    def get_state(self) -> dict[str, Tensor]:
        state = {**super().get_state(), "logits": self.logits.detach().clone()}
        # The Adam moments of the logits; absent before the first update.
        for name, value in self.optimizer.state.get(self.logits, {}).items():
            state[f"adam.{name}"] = value.detach().clone()
        if self.previous_losses is not None:
            state["previous_losses"] = self.previous_losses.clone()
        return state

    def set_state(self, state: dict[str, Tensor]) -> None:
        super().set_state(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        moments = {name.removeprefix("adam."): value.clone() for name, value in state.items()
                   if name.startswith("adam.")}
        self.optimizer.state.clear()
        if moments:
            self.optimizer.state[self.logits] = moments
        previous = state.get("previous_losses")
        self.previous_losses = None if previous is None else previous.to(torch.float64).clone()


class GramianWeights(Strategy):
    """A torchjd weighting of the global Gramian of the task gradients.

    It keeps no state between steps: the only randomness (PCGrad's task order) is drawn from
    a generator seeded by `seed` and the step number, so the base `get_state` is complete.
    """

    needs_gramian = True

    def __init__(self, num_tasks: int, weighting: Callable[[Tensor], Tensor],
                 seed: int = 0) -> None:
        super().__init__(num_tasks)
        self.weighting = weighting
        self.seed = seed

    def weights(self, losses: Tensor, gramian: Tensor | None, step: int) -> Tensor:
        if gramian is None:
            raise ValueError("a Gramian-based strategy needs the Gramian of the task gradients")

        # PCGrad draws its task order from torch's global generator: fork it and seed it with
        # the step, so every rank (and a one-process run) draws the same order.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + step)
            weights = self.weighting(gramian.double())
        return weights.to(losses.dtype)


class EnumeratingProjector(DualConeProjector):
    """Exact dual-cone projection for few tasks, by enumerating the active constraints.

    Solves `min_v v^T G v subject to v >= u` (the problem torchjd's UPGrad and DualProj pose)
    for each row `u`. For each set of free coordinates the KKT conditions are a linear system;
    the solution is the one that is feasible with non-negative multipliers.

    Written here because torchjd's default `QuadprogProjector` needs the `quadprog` and
    `qpsolvers` packages, which this project does not install. Enumeration costs `2**tasks`
    small solves, which is negligible for the handful of tasks of this model.
    """

    def __init__(self, regularization: float = 1e-4, tolerance: float = 1e-9) -> None:
        self.regularization = regularization
        self.tolerance = tolerance

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        gramian = G.double()
        trace = gramian.diagonal().sum()
        if trace <= 0:
            return U.clone()
        size = gramian.shape[0]
        gramian = gramian / trace + self.regularization * torch.eye(size, dtype=gramian.dtype,
                                                                    device=gramian.device)
        rows = U.double().reshape(-1, size)
        solved = torch.stack([self._project(u, gramian) for u in rows])
        return solved.reshape(U.shape).to(U.dtype)

    def _project(self, u: Tensor, gramian: Tensor) -> Tensor:
        size = len(u)
        # Start from all constraints active (v = u, the solution when G u >= 0).
        for active_count in range(size, -1, -1):
            for active in itertools.combinations(range(size), active_count):
                v = u.clone()
                free = [i for i in range(size) if i not in active]
                if free:
                    fixed = list(active)
                    rhs = -gramian[free][:, fixed] @ u[fixed] if fixed else torch.zeros(
                        len(free), dtype=u.dtype)
                    v[free] = torch.linalg.solve(gramian[free][:, free], rhs)
                multipliers = gramian @ v
                if (v >= u - self.tolerance).all() and (
                        multipliers[list(active)] >= -self.tolerance).all():
                    return v
        raise ValueError(f"dual cone projection found no KKT point for G={gramian.tolist()}")


def cagrad_weights(gramian: Tensor, c: float = 0.5, iterations: int = 500) -> Tensor:
    """Weights of CAGrad (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021) from a Gramian `[m, m]`.

    CAGrad's update is `d = g0 + sqrt(phi) / |g_w| * g_w` with `g0` the mean gradient,
    `phi = c^2 |g0|^2` and `w` in the simplex minimising `g_w . g0 + sqrt(phi) |g_w|`; the
    authors' code then divides `d` by `1 + c^2`. Returned as weights on the task gradients,
    multiplied by `m` so that they sum to about `m` like torchjd's aggregators (sum, not mean).

    Written here because torchjd's `CAGradWeighting` needs `cvxpy` and `clarabel`, which this
    project does not install. The simplex problem is solved by exponentiated gradient descent
    (mirror descent), deterministic for a given Gramian.
    """
    gramian = gramian.double()
    size = gramian.shape[0]
    mean_weights = torch.full((size,), 1.0 / size, dtype=gramian.dtype, device=gramian.device)
    g0_norm = torch.sqrt((mean_weights @ gramian @ mean_weights).clamp(min=0))
    if g0_norm <= 1e-12:
        return torch.zeros_like(mean_weights)
    sqrt_phi = c * g0_norm
    scale = gramian.diagonal().max()

    w = mean_weights.clone()
    for iteration in range(iterations):
        gw_norm = torch.sqrt((w @ gramian @ w).clamp(min=1e-20))
        gradient = gramian @ mean_weights + sqrt_phi * (gramian @ w) / gw_norm
        step = 1.0 / (scale * math.sqrt(iteration + 1))
        w = w * torch.exp(-step * gradient)
        w = w / w.sum()

    gw_norm = torch.sqrt((w @ gramian @ w).clamp(min=1e-20))
    weights = mean_weights + sqrt_phi / gw_norm * w
    return size * weights / (1.0 + c * c)


def make_strategy(name: str, task_weights: Sequence[float], *, seed: int = 0,
                  dwa_temperature: float = 2.0, cagrad_c: float = 0.5) -> Strategy:
    """Build the strategy `name` for `len(task_weights)` tasks.

    `task_weights` are the fixed weights of `fixed`. The other strategies ignore them.
    """
    num_tasks = len(task_weights)
    if name == "fixed":
        return FixedWeights(task_weights)
    if name == "uncertainty":
        return UncertaintyWeights(num_tasks)
    if name == "dwa":
        return DynamicWeightAverage(num_tasks, temperature=dwa_temperature)
    if name == "famo":
        return FastAdaptiveMultitask(num_tasks)
    gramian_weightings: dict[str, Callable[[Tensor], Tensor]] = {
        "pcgrad": PCGradWeighting(),
        "upgrad": UPGradWeighting(projector=EnumeratingProjector()),
        "dualproj": DualProjWeighting(projector=EnumeratingProjector()),
        "mgda": MGDAWeighting(),
        "imtlg": IMTLGWeighting(),
        "aligned_mtl": AlignedMTLWeighting(),
        "mean": MeanWeighting(),
        "cagrad": lambda gramian: cagrad_weights(gramian, c=cagrad_c),
    }
    if name not in gramian_weightings:
        raise ValueError(f"unknown aggregation strategy {name!r}; expected one of "
                         f"{', '.join(STRATEGIES)}")
    return GramianWeights(num_tasks, gramian_weightings[name], seed=seed)


def aggregate_matrix(strategy: Strategy, matrix: Tensor, step: int = 0) -> Tensor:
    """Combine task gradients `[tasks, n]` into one vector `[n]` with a Gramian strategy.

    The rows are plain vectors here; training applies the same weights to gradients at the
    shared representation. Used by tests and for reading a strategy's effect by hand.
    """
    gramian = matrix.double() @ matrix.double().T
    losses = torch.ones(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    weights = strategy.weights(losses, gramian, step)
    return weights.to(matrix.dtype) @ matrix


# ----------------------------------------------------------------------------------------------
# One training step's backward pass and gradient communication.


@dataclass
class BackwardResult:
    """Results of one aggregated backward pass (all values global, the same on every rank)."""

    losses: Tensor
    """[tasks] global task losses."""
    weights: Tensor
    """[tasks] effective task weights used for this step."""
    gramian: Tensor | None
    """[tasks, tasks] global Gramian of the task gradients at the representation, or None."""


def all_reduce_sum(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum `tensor` over the ranks in place when a process group exists; return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def aggregated_backward(strategy: Strategy, task_losses: Sequence[Tensor] | None,
                        representation: Tensor | None, detached_representation: Tensor | None,
                        step: int, group: dist.ProcessGroup | None = None) -> BackwardResult:
    """Accumulate into `.grad` this rank's share of the aggregated multi-task gradient.

    Args:
        strategy: maps global losses (and the Gramian) to task weights.
        task_losses: this rank's share `L_i^r` of each global task loss (scalars), that is its
            sum of per-target losses divided by the global target count, so that the global
            loss is the sum of the shares over ranks. None on a rank without a batch this
            step: it then joins the collectives with zeros and computes no gradient.
        representation: the backbone output with its graph to the shared parameters.
        detached_representation: `representation.detach().requires_grad_()`, the tensor the
            task heads were computed from.
        step: optimizer step number, seeds the strategy's randomness.
        group: process group to all-reduce the losses and the Gramian over (default: world).

    After this call the parameters hold this rank's share of the gradient. Sum them over the
    ranks with `all_reduce_gradients` before the optimizer step. Raises ValueError when the
    number of losses does not match the strategy.
    """
    num_tasks = strategy.num_tasks
    if task_losses is not None and len(task_losses) != num_tasks:
        raise ValueError(f"got {len(task_losses)} task losses for a strategy of "
                         f"{num_tasks} tasks")
    device = _device_of(strategy, representation)

    losses = torch.zeros(num_tasks, dtype=torch.float64, device=device)
    if task_losses is not None:
        losses = torch.stack([loss.detach() for loss in task_losses]).double()
    all_reduce_sum(losses, group)

    # Gradients of each task at the shared representation, and their global Gramian.
    gramian = None
    task_gradients = None
    if strategy.needs_gramian:
        gramian = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=device)
        if task_losses is not None:
            task_gradients = [_gradient_or_zeros(loss, detached_representation)
                              for loss in task_losses]
            flat = torch.stack([gradient.flatten() for gradient in task_gradients]).double()
            gramian = flat @ flat.T
        all_reduce_sum(gramian, group)

    weights = strategy.weights(losses, gramian, step).detach()

    if task_losses is not None:
        # Heads: the weighted loss, with the representation detached, so only head parameters
        # (and a tied output embedding) receive this part.
        combined = sum(weight * loss for weight, loss in zip(weights.to(losses.device).float(),
                                                             task_losses))
        combined.backward()

        # Backbone and embeddings: the weighted gradient at the representation, pushed
        # through the backbone once. For loss-based strategies it is the gradient that the
        # weighted loss left on the detached representation.
        if task_gradients is not None:
            at_representation = sum(weight * gradient for weight, gradient
                                    in zip(weights.to(representation.dtype), task_gradients))
        else:
            at_representation = detached_representation.grad
        if at_representation is not None:
            representation.backward(at_representation)

    auxiliary = strategy.auxiliary_loss(losses)
    if auxiliary is not None:
        auxiliary.backward()
    return BackwardResult(losses=losses, weights=weights, gramian=gramian)


def _device_of(strategy: Strategy, representation: Tensor | None) -> torch.device:
    if representation is not None:
        return representation.device
    for tensor in (*strategy.parameters(), *strategy.buffers()):
        return tensor.device
    return torch.device("cpu")


def _gradient_or_zeros(loss: Tensor, inputs: Tensor) -> Tensor:
    (gradient,) = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    return torch.zeros_like(inputs) if gradient is None else gradient


def all_reduce_gradients(parameters: Sequence[nn.Parameter],
                         group: dist.ProcessGroup | None = None) -> None:
    """Sum the `.grad` of `parameters` over the ranks with one flat all-reduce.

    A parameter without a gradient counts as zeros, so every rank sends the same layout even
    when one rank had no batch. Parameters are in the same order on every rank.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    flat = torch.cat([parameter.grad.flatten() for parameter in parameters])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad.copy_(flat[offset:offset + count].view_as(parameter))
        offset += count


def task_gradients_on_parameters(task_losses: Sequence[Tensor] | None,
                                 representation: Tensor | None,
                                 detached_representation: Tensor | None,
                                 parameters: Sequence[nn.Parameter],
                                 group: dist.ProcessGroup | None = None,
                                 num_tasks: int | None = None) -> Tensor:
    """Return the global task gradients `[tasks, n_shared]` on the shared `parameters`.

    Costs one backward pass through the backbone per task and an all-reduce of
    `tasks * n_shared` floats, so training calls it only on diagnostic steps. Keeps the graphs.
    A rank without a batch passes None for the tensors and `num_tasks`, and sends zeros.
    """
    size = sum(parameter.numel() for parameter in parameters)
    device = parameters[0].device
    if task_losses is None:
        if num_tasks is None:
            raise ValueError("num_tasks is required when task_losses is None")
        return all_reduce_sum(torch.zeros(num_tasks, size, device=device), group)

    rows = []
    for loss in task_losses:
        at_representation = _gradient_or_zeros(loss, detached_representation)
        gradients = torch.autograd.grad(representation, parameters,
                                        grad_outputs=at_representation, retain_graph=True,
                                        allow_unused=True)
        rows.append(torch.cat([torch.zeros(p.numel(), device=device) if g is None
                               else g.flatten() for p, g in zip(parameters, gradients)]))
    return all_reduce_sum(torch.stack(rows), group)


def gradient_diagnostics(task_gradients: Tensor) -> dict[str, list]:
    """Return per-task gradient norms and the pairwise cosine matrix of `[tasks, n]` rows."""
    norms = task_gradients.norm(dim=1)
    unit = task_gradients / norms.clamp(min=1e-20).unsqueeze(1)
    cosine = unit @ unit.T
    return {"gradient_norm": norms.tolist(), "cosine": cosine.tolist()}
