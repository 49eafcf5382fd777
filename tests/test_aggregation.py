"""Aggregation strategies on small cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from behaviorgpt.aggregation import (EnumeratingProjector, STRATEGIES, aggregate_matrix,
                                     cagrad_weights, gradient_diagnostics, make_strategy)

CONFLICTING = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
"""g1 . g2 = -1: the two task gradients conflict."""
ALIGNED = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
ORTHOGONAL = torch.eye(2)


def test_pcgrad_projects_conflicting_pair():
    strategy = make_strategy("pcgrad", [1.0, 1.0])

    # g1 - (g1.g2 / |g2|^2) g2 = [1, 0] + 0.5 [-1, 1] = [0.5, 0.5]
    # g2 - (g2.g1 / |g1|^2) g1 = [-1, 1] + [1, 0] = [0, 1]
    combined = aggregate_matrix(strategy, CONFLICTING)

    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))


def test_pcgrad_keeps_aligned_pair():
    combined = aggregate_matrix(make_strategy("pcgrad", [1.0, 1.0]), ALIGNED)

    torch.testing.assert_close(combined, torch.tensor([2.0, 1.0]))


def test_pcgrad_order_depends_on_step_only():
    gradients = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
    strategy = make_strategy("pcgrad", [1.0] * 3, seed=5)

    first = aggregate_matrix(strategy, gradients, step=3)
    torch.manual_seed(123)  # the global generator must not matter
    second = aggregate_matrix(strategy, gradients, step=3)

    torch.testing.assert_close(first, second)


def test_upgrad_projects_conflicting_pair():
    # Mean preference: project 0.5 g1 = [0.5, 0] onto {x: x.g2 >= 0}: [0.25, 0.25];
    # project 0.5 g2 = [-0.5, 0.5] onto {x: x.g1 >= 0}: [0, 0.5]. Sum: [0.25, 0.75].
    combined = aggregate_matrix(make_strategy("upgrad", [1.0, 1.0]), CONFLICTING)

    torch.testing.assert_close(combined, torch.tensor([0.25, 0.75]), atol=1e-3, rtol=0)
    assert float(combined @ CONFLICTING[0]) >= 0
    assert float(combined @ CONFLICTING[1]) >= 0


def test_upgrad_keeps_aligned_pair():
    combined = aggregate_matrix(make_strategy("upgrad", [1.0, 1.0]), ALIGNED)

    torch.testing.assert_close(combined, torch.tensor([1.0, 0.5]), atol=1e-3, rtol=0)


def test_projector_solves_box_qp():
    gramian = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    projector = EnumeratingProjector(regularization=0.0)

    # min v^T G v with v >= [1, 0]: v2 free gives v2 = -G21 v1 / G22 = 0.5.
    projected = projector(torch.tensor([[1.0, 0.0]], dtype=torch.float64), gramian)

    torch.testing.assert_close(projected, torch.tensor([[1.0, 0.5]], dtype=torch.float64))


def test_mgda_finds_min_norm_point():
    # min |a g1 + (1 - a) g2|^2 = a^2 - 2a(1 - a) + 2(1 - a)^2 is smallest at a = 0.6.
    combined = aggregate_matrix(make_strategy("mgda", [1.0, 1.0]), CONFLICTING)

    torch.testing.assert_close(combined, 0.6 * CONFLICTING[0] + 0.4 * CONFLICTING[1],
                               atol=1e-3, rtol=0)


def test_cagrad_orthogonal_pair():
    # Symmetric case: w = [0.5, 0.5], |g_w| = |g0| = sqrt(0.5), so d = g0 (1 + c) and the
    # authors' rescaling gives d / (1 + c^2) = [0.6, 0.6] for c = 0.5. Sum scale: times 2.
    weights = cagrad_weights(ORTHOGONAL @ ORTHOGONAL.T, c=0.5)

    torch.testing.assert_close(weights, torch.tensor([1.2, 1.2], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_cagrad_without_radius_is_mean():
    weights = cagrad_weights(CONFLICTING @ CONFLICTING.T, c=0.0)

    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_fixed_weights_returned():
    strategy = make_strategy("fixed", [1.0, 0.5, 0.25])

    weights = strategy.weights(torch.tensor([3.0, 2.0, 1.0]), None, step=0)

    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5, 0.25]))


def test_uncertainty_gradient_of_log_variance():
    strategy = make_strategy("uncertainty", [1.0, 1.0])
    losses = torch.tensor([2.0, 0.5])

    strategy.auxiliary_loss(losses).backward()

    # d/ds (exp(-s) L + s) = 1 - exp(-s) L, at s = 0.
    torch.testing.assert_close(strategy.log_variance.grad, torch.tensor([-1.0, 0.5]))
    torch.testing.assert_close(strategy.weights(losses, None, 0), torch.tensor([1.0, 1.0]))


def test_dwa_uses_last_two_epochs():
    strategy = make_strategy("dwa", [1.0, 1.0], dwa_temperature=2.0)
    for epoch_losses in ([1.0, 1.0], [0.5, 1.0]):
        assert strategy.weights(torch.ones(2), None, 0).tolist() == [1.0, 1.0]
        strategy.observe(torch.tensor(epoch_losses))
        strategy.end_epoch()

    weights = strategy.weights(torch.ones(2), None, 0)

    # Ratios [0.5, 1.0], temperature 2: 2 * softmax([0.25, 0.5]).
    expected = 2 / (1 + math.exp(0.25))
    torch.testing.assert_close(weights, torch.tensor([expected, 2 - expected]))


def test_famo_weights_and_update():
    strategy = make_strategy("famo", [1.0, 1.0])
    losses = torch.tensor([1.0, 4.0])

    # Uniform z: weights proportional to 1 / L, normalised: [1, 0.25] / 1.25.
    torch.testing.assert_close(strategy.weights(losses, None, 0), torch.tensor([0.8, 0.2]))

    strategy.observe(losses)
    strategy.observe(torch.tensor([0.5, 4.0]))

    # Task 0 improved, so its logit goes down by Adam's first step size.
    torch.testing.assert_close(strategy.logits.detach(), torch.tensor([-0.025, 0.025]))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_weights_are_finite(name):
    strategy = make_strategy(name, [1.0, 0.5, 0.5])
    gradients = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 1.0, 0.0], [0.1, -0.3, 1.0]])
    gramian = gradients.double() @ gradients.double().T

    weights = strategy.weights(torch.tensor([1.0, 2.0, 0.5]), gramian, step=1)

    assert weights.shape == (3,)
    assert torch.isfinite(weights).all()
    assert (weights >= -1e-6).all()


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError, match="unknown aggregation strategy 'nash'"):
        make_strategy("nash", [1.0, 1.0])


def test_diagnostics_cosine():
    diagnostics = gradient_diagnostics(CONFLICTING)

    assert diagnostics["gradient_norm"] == pytest.approx([1.0, math.sqrt(2)])
    assert diagnostics["cosine"][0][1] == pytest.approx(-1 / math.sqrt(2))
    assert diagnostics["cosine"][0][0] == pytest.approx(1.0)
