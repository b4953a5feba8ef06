"""Pairwise objectives (Diffusion-DPO, SmPO loss, MaPO), the shared reduction, and the registry,
each checked against its formula evaluated by hand on plain floats."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from diffpref import objectives
from diffpref.objectives import dpo, mapo, smpo
from diffpref.objectives.base import Errors, denoising_error


def neg_logsig(x: float) -> float:
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def g(x: float) -> float:
    return x / (math.exp(x) - 1.0)


# Two pairs. Pair 0: model improved on the winner more than on the loser; pair 1: the opposite.
M = [[0.10, 0.30], [0.20, 0.20]]
R = [[0.20, 0.25], [0.20, 0.30]]
# logits = (r_w - r_l) - (m_w - m_l)
LOGITS = [(0.20 - 0.25) - (0.10 - 0.30), (0.20 - 0.30) - (0.20 - 0.20)]  # [0.15, -0.10]


def pair_errors(**kw: torch.Tensor) -> Errors:
    return Errors(
        model=torch.tensor(M, dtype=torch.float64), ref=torch.tensor(R, dtype=torch.float64), **kw
    )


# -- reduction convention -------------------------------------------------------------------


def test_denoising_error_is_a_per_sample_mean_over_latent_elements() -> None:
    pred = torch.tensor([[[[[1.0, 3.0]]], [[[0.0, 2.0]]]]])  # [B=1, G=2, C=1, H=1, W=2]
    target = torch.tensor([[[1.0, 1.0]]])  # [C, H, W], shared by the pair
    err = denoising_error(pred, target, n_batch_dims=2)
    assert err.shape == (1, 2)
    assert err.tolist() == [[(0.0 + 4.0) / 2, (1.0 + 1.0) / 2]]


def test_dpo_on_raw_predictions_uses_per_sample_means() -> None:
    noise = torch.zeros(1, 1, 2)
    model = torch.tensor([[[[[1.0, 1.0]]], [[[2.0, 2.0]]]]])  # errors w=1, l=4
    ref = torch.tensor([[[[[2.0, 0.0]]], [[[2.0, 0.0]]]]])  # errors w=2, l=2
    e = Errors(model=denoising_error(model, noise, 2), ref=denoising_error(ref, noise, 2))
    value, metrics = dpo.loss(e, dpo.Params(beta=1.0))
    inside = 0.5 * 1.0 * ((2.0 - 2.0) - (1.0 - 4.0))  # 1.5 (a sum reduction would give 3.0)
    assert value.item() == pytest.approx(neg_logsig(inside))
    assert metrics["reward_margin"].item() == pytest.approx(inside)


# -- Diffusion-DPO --------------------------------------------------------------------------


def test_dpo_sigmoid_matches_official_scaling() -> None:
    beta = 10.0
    value, metrics = dpo.loss(pair_errors(), dpo.Params(beta=beta))
    inside = [0.5 * beta * x for x in LOGITS]  # [0.75, -0.5]
    expected = (neg_logsig(inside[0]) + neg_logsig(inside[1])) / 2
    assert value.item() == pytest.approx(expected)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)
    assert metrics["reward_margin"].item() == pytest.approx(sum(inside) / 2)
    assert metrics["model_err_w"].item() == pytest.approx((0.10 + 0.20) / 2)
    assert metrics["ref_err_l"].item() == pytest.approx((0.25 + 0.30) / 2)
    assert all(not v.requires_grad and v.ndim == 0 for v in metrics.values())


def test_dpo_model_better_than_ref_on_winner_gives_positive_margin_and_full_accuracy() -> None:
    e = Errors(model=torch.tensor([[0.1, 0.3]]), ref=torch.tensor([[0.2, 0.3]]))
    value, metrics = dpo.loss(e, dpo.Params(beta=100.0))
    assert metrics["reward_margin"].item() == pytest.approx(0.5 * 100 * 0.1)
    assert metrics["implicit_acc"].item() == 1.0
    assert value.item() < math.log(2)


def test_dpo_beta_scale_multiplies_beta_per_pair() -> None:
    beta = 10.0
    e = pair_errors(beta_scale=torch.tensor([2.0, 1.0]))
    value, metrics = dpo.loss(e, dpo.Params(beta=beta))
    inside = [0.5 * beta * 2.0 * LOGITS[0], 0.5 * beta * 1.0 * LOGITS[1]]  # [1.5, -0.5]
    assert value.item() == pytest.approx((neg_logsig(inside[0]) + neg_logsig(inside[1])) / 2)
    assert metrics["reward_margin"].item() == pytest.approx(sum(inside) / 2)


def test_dpo_larger_beta_scales_the_margin() -> None:
    _, m1 = dpo.loss(pair_errors(), dpo.Params(beta=10.0))
    _, m2 = dpo.loss(pair_errors(), dpo.Params(beta=30.0))
    assert m2["reward_margin"].item() == pytest.approx(3 * m1["reward_margin"].item())


def test_dpo_hinge_uses_the_same_scaled_margin() -> None:
    value, _ = dpo.loss(pair_errors(), dpo.Params(beta=10.0, variant="hinge"))
    inside = [0.75, -0.5]
    assert value.item() == pytest.approx((max(0.0, 1 - inside[0]) + max(0.0, 1 - inside[1])) / 2)


def test_dpo_ipo_regresses_the_scaled_margin_to_one_over_two_tau() -> None:
    tau = 0.25
    value, _ = dpo.loss(pair_errors(), dpo.Params(beta=10.0, variant="ipo", ipo_tau=tau))
    target = 1 / (2 * tau)  # 2.0
    assert value.item() == pytest.approx(((0.75 - target) ** 2 + (-0.5 - target) ** 2) / 2)


def test_dpo_gradient_flows_to_model_only() -> None:
    beta = 10.0
    model = torch.tensor(M, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(R, dtype=torch.float64, requires_grad=True)
    value, _ = dpo.loss(Errors(model=model, ref=ref), dpo.Params(beta=beta))
    value.backward()
    assert ref.grad is None
    # d/dm_w of mean_b -log σ(0.5β·logits_b) = 0.5β(1 - σ(inside_0)) / B
    assert model.grad[0, 0].item() == pytest.approx(0.5 * beta * (1 - sig(0.75)) / 2)
    assert model.grad[0, 1].item() == pytest.approx(-0.5 * beta * (1 - sig(0.75)) / 2)


def test_dpo_requires_reference_and_pairs() -> None:
    with pytest.raises(ValueError, match="ref"):
        dpo.loss(Errors(model=torch.zeros(2, 2)), dpo.Params(beta=1.0))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        dpo.loss(Errors(model=torch.zeros(2, 3), ref=torch.zeros(2, 3)), dpo.Params(beta=1.0))


# -- SmPO -----------------------------------------------------------------------------------


def test_smpo_probability_uses_the_bounds_passed_in() -> None:
    p = smpo.preference_probability(torch.tensor([0.25]), torch.tensor([0.20]), 0.1, 0.3)
    assert p.item() == pytest.approx(sig((0.25 - 0.1) / 0.2 - (0.20 - 0.1) / 0.2))
    wider = smpo.preference_probability(torch.tensor([0.25]), torch.tensor([0.20]), 0.0, 1.0)
    assert wider.item() == pytest.approx(sig(0.05))
    with pytest.raises(ValueError, match="s_max > s_min"):
        smpo.preference_probability(torch.tensor([0.2]), torch.tensor([0.1]), 0.3, 0.3)


def test_smpo_loss_uses_each_pairs_own_probability() -> None:
    beta, gamma = 10.0, 10.0
    prob = torch.tensor([0.6, 0.5], requires_grad=True)
    e = pair_errors(prob=prob)
    e.model.requires_grad_(True)
    value, metrics = smpo.loss(e, smpo.Params(beta=beta, gamma=gamma))
    inside = [0.5 * beta * gamma * (2 * 0.6 - 1) * LOGITS[0], 0.0]  # [1.5, 0.0]: a tie is log 2
    assert value.item() == pytest.approx((neg_logsig(inside[0]) + math.log(2)) / 2)
    assert metrics["prob"].item() == pytest.approx(0.55)
    value.backward()
    assert prob.grad is None  # p is data, not a parameter
    assert e.model.grad is not None


def test_smpo_honours_beta_scale_and_reduces_to_scaled_dpo() -> None:
    # p = σ(x) with γ(2p-1) = 1 makes SmPO exactly DPO.
    p_one = (1 / 10 + 1) / 2
    e = pair_errors(prob=torch.tensor([p_one, p_one]), beta_scale=torch.tensor([2.0, 1.0]))
    v_smpo, _ = smpo.loss(e, smpo.Params(beta=10.0, gamma=10.0))
    inside = [0.5 * 10.0 * 2.0 * LOGITS[0], 0.5 * 10.0 * LOGITS[1]]
    assert v_smpo.item() == pytest.approx((neg_logsig(inside[0]) + neg_logsig(inside[1])) / 2)


def test_smpo_requires_probabilities() -> None:
    with pytest.raises(ValueError, match="prob"):
        smpo.loss(pair_errors(), smpo.Params(beta=1.0))


# -- MaPO -----------------------------------------------------------------------------------


def test_mapo_link_is_safe_at_zero_and_bounded() -> None:
    x = torch.tensor([0.0, 1e-6, 1e-3, 0.5, 5.0, 80.0, 500.0], dtype=torch.float64)
    x.requires_grad_(True)
    y = mapo.link(x)
    y.sum().backward()
    assert y[0].item() == 1.0
    assert torch.isfinite(x.grad).all() and x.grad[0].item() == pytest.approx(-0.5)
    for xi, yi in zip(x.tolist()[1:], y.tolist()[1:], strict=True):
        assert yi == pytest.approx(g(xi), rel=1e-9, abs=1e-300)
    phi = mapo.phi(torch.linspace(1e-3, 2.0, 50, dtype=torch.float64), beta=8.0)
    assert bool(((phi > 0) & (phi < 1)).all())
    assert bool((phi[1:] < phi[:-1]).all())  # lower error => higher score


def test_mapo_code_parameterisation_by_hand() -> None:
    m_w, m_l = 0.02, 0.03
    e = Errors(model=torch.tensor([[m_w, m_l]], dtype=torch.float64))
    value, metrics = mapo.loss(e, mapo.Params(param="code"))
    arg = 1000 * (g(0.5 * m_w) - g(0.5 * m_l))
    assert value.item() == pytest.approx(m_w + 0.1 * neg_logsig(arg))
    assert metrics["reward_margin"].item() == pytest.approx(arg)
    assert metrics["implicit_acc"].item() == 1.0


def test_mapo_paper_parameterisation_by_hand() -> None:
    model = [[0.05, 0.10], [0.20, 0.10]]
    e = Errors(model=torch.tensor(model, dtype=torch.float64))
    beta = 8.0
    value, metrics = mapo.loss(e, mapo.Params(param="paper", beta=beta))
    args = [g(beta * m_w) - g(beta * m_l) for m_w, m_l in model]
    expected = (0.05 + 0.20) / 2 + (neg_logsig(args[0]) + neg_logsig(args[1])) / 2 / beta
    assert value.item() == pytest.approx(expected)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)


def test_mapo_code_and_paper_parameterisations_differ() -> None:
    e = Errors(model=torch.tensor([[0.05, 0.10]], dtype=torch.float64))
    v_code, _ = mapo.loss(e, mapo.Params(param="code"))
    v_paper, _ = mapo.loss(e, mapo.Params(param="paper"))
    assert abs(v_code.item() - v_paper.item()) > 1e-3


def test_mapo_needs_no_reference_and_pulls_winner_down() -> None:
    model = torch.tensor([[0.05, 0.10]], requires_grad=True)
    value, _ = mapo.loss(Errors(model=model), mapo.Params())
    value.backward()
    assert model.grad[0, 0] > 0  # descent lowers the winner's error
    assert model.grad[0, 1] < 0  # and raises the loser's
    assert mapo.NEEDS_REFERENCE is False


# -- registry -------------------------------------------------------------------------------

LABELS = {"pairwise", "smoothed", "listwise", "pointwise", "winners", "captions"}


def test_registry_names_every_loss() -> None:
    names = {"dpo", "mapo", "smpo", "lair", "kto", "sft", "softrepa", "agsm"}
    assert set(objectives.LOSSES) == names
    refs = {n: objectives.get(n).NEEDS_REFERENCE for n in names}
    assert {n for n, r in refs.items() if r} == {"dpo", "smpo", "lair", "kto"}
    for name in names:
        module = objectives.get(name)
        assert module.Params.model_fields["labels"].default in LABELS
        assert callable(module.loss)


def test_registry_unknown_name_lists_known_losses() -> None:
    with pytest.raises(KeyError, match=r"unknown loss 'dpp'.*dpo.*smpo"):
        objectives.get("dpp")


def test_params_reject_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError):
        dpo.Params(beta=1.0, betta=1.0)
    with pytest.raises(pydantic.ValidationError):
        dpo.Params(beta=1.0, rethinking={"delta": 1.0, "tua": 3})
