"""LAIR (listwise), KTO (pointwise) and SFT against their formulas evaluated by hand."""

from __future__ import annotations

import math

import pytest
import torch

from diffpref.objectives import kto, lair, sft
from diffpref.objectives.base import Errors, denoising_error


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- LAIR -----------------------------------------------------------------------------------


def test_lair_advantages_without_standardisation() -> None:
    a = lair.advantages(torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64), 2.0, False)
    z = math.exp(0.5) + math.exp(1.0) + math.exp(2.0)
    expected = [math.exp(0.5) / z - 1 / 3, math.exp(1.0) / z - 1 / 3, math.exp(2.0) / z - 1 / 3]
    assert a[0].tolist() == pytest.approx(expected)
    assert a.sum().item() == pytest.approx(0.0, abs=1e-12)


def test_lair_advantages_standardise_within_each_group() -> None:
    r = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    a = lair.advantages(r, 0.5, standardize=True)
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 3)
    zs = [(x - mean) / std / 0.5 for x in (1.0, 2.0, 4.0)]
    den = sum(math.exp(v) for v in zs)
    assert a[0].tolist() == pytest.approx([math.exp(v) / den - 1 / 3 for v in zs], rel=1e-5)
    assert a[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # a tie carries no signal
    # standardised advantages ignore the reward model's affine scale
    assert torch.allclose(lair.advantages(10 * r + 3, 0.5, True), a, atol=1e-6)


def test_lair_loss_by_hand() -> None:
    beta, lam = 10.0, 2.0
    model = [[0.10, 0.20, 0.30]]
    ref = [[0.15, 0.20, 0.25]]
    adv = [[0.3, -0.1, -0.2]]
    e = Errors(
        model=torch.tensor(model, dtype=torch.float64),
        ref=torch.tensor(ref, dtype=torch.float64),
        advantage=torch.tensor(adv, dtype=torch.float64),
    )
    br = [beta * (r - m) for r, m in zip(ref[0], model[0], strict=True)]  # [0.5, 0, -0.5]
    per = [-a * x + lam / 2 * x * x for a, x in zip(adv[0], br, strict=True)]
    value, metrics = lair.loss(e, lair.Params(beta=beta, lam=lam))
    assert value.item() == pytest.approx(sum(per))
    value_mean, _ = lair.loss(e, lair.Params(beta=beta, lam=lam, reduction="mean"))
    assert value_mean.item() == pytest.approx(sum(per) / 3)
    assert metrics["implicit_acc"].item() == 1.0  # βr̂ ranks the 3 candidates as A does
    swapped = Errors(
        model=torch.tensor([[0.10, 0.25, 0.25]], dtype=torch.float64),  # βr̂ = [0.5, -0.5, 0]
        ref=torch.tensor(ref, dtype=torch.float64),
        advantage=torch.tensor(adv, dtype=torch.float64),
    )
    # pairs ordered by A: (0,1) and (0,2) agree, (1,2) does not
    assert lair.loss(swapped, lair.Params(beta=beta, lam=lam))[1]["implicit_acc"].item() == (
        pytest.approx(2 / 3)
    )
    assert metrics["implicit_reward"].item() == pytest.approx(sum(br) / 3)
    scaled, _ = lair.loss(e, lair.Params(beta=beta / 2, lam=lam))
    e.beta_scale = torch.tensor([2.0], dtype=torch.float64)
    value_scaled, _ = lair.loss(e, lair.Params(beta=beta / 2, lam=lam))
    assert value_scaled.item() == pytest.approx(sum(per))
    assert scaled.item() != pytest.approx(sum(per))


def test_lair_closed_form_optimum_is_advantage_over_lambda() -> None:
    beta, lam = 4.0, 3.0
    adv = lair.advantages(torch.tensor([[0.1, 0.5, 0.2, 0.9]], dtype=torch.float64), 0.3, True)
    ref = torch.full((1, 4), 0.5, dtype=torch.float64)
    r_hat = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)  # free implicit rewards
    opt = torch.optim.LBFGS([r_hat], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        e = Errors(model=ref - r_hat, ref=ref, advantage=adv)
        value, _ = lair.loss(e, lair.Params(beta=beta, lam=lam))
        value.backward()
        return value

    opt.step(closure)
    assert torch.allclose(beta * r_hat.detach(), adv / lam, atol=1e-6)
    assert bool(((beta * r_hat).abs() < 1 / lam).all())  # bounded because |A| < 1


def test_lair_requires_advantages_per_candidate() -> None:
    e = Errors(model=torch.zeros(2, 3), ref=torch.zeros(2, 3), advantage=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="advantage"):
        lair.loss(e, lair.Params(beta=1.0))


# -- KTO ------------------------------------------------------------------------------------

KTO_M = [0.10, 0.30, 0.20]
KTO_R = [0.20, 0.25, 0.20]
KTO_GOOD = [True, False, True]


def kto_errors(model: torch.Tensor | None = None) -> Errors:
    if model is None:
        model = torch.tensor(KTO_M, dtype=torch.float64)
    return Errors(
        model=model.unsqueeze(1),
        ref=torch.tensor(KTO_R, dtype=torch.float64).unsqueeze(1),
        desirable=torch.tensor(KTO_GOOD),
    )


def kto_hand(beta: float, lam_d: float, lam_u: float) -> tuple[float, list[float], float]:
    g = [r - m for r, m in zip(KTO_R, KTO_M, strict=True)]  # [0.1, -0.05, 0.0]
    z = max(0.0, sum(g) / 3)
    signs = [1.0 if d else -1.0 for d in KTO_GOOD]
    h = [sig(s * beta * (gi - z)) for s, gi in zip(signs, g, strict=True)]
    w = [lam_d if d else lam_u for d in KTO_GOOD]
    loss = sum(wi * (1 - hi) for wi, hi in zip(w, h, strict=True)) / 3
    # with z detached: d/dm_i of w_i(1 - h_i)/B = w_i h_i (1 - h_i) s_i β / B
    grads = [wi * hi * (1 - hi) * s * beta / 3 for wi, hi, s in zip(w, h, signs, strict=True)]
    return loss, grads, z


def test_kto_loss_by_hand() -> None:
    value, metrics = kto.loss(kto_errors(), kto.Params(beta=10.0, lambda_d=1.0, lambda_u=2.0))
    expected, _, z = kto_hand(10.0, 1.0, 2.0)
    assert value.item() == pytest.approx(expected)
    assert metrics["reference_point"].item() == pytest.approx(z)
    assert metrics["implicit_acc"].item() == pytest.approx(2 / 3)  # g - z: +, -, - with signs +,-,+


def test_kto_reference_point_is_detached() -> None:
    model = torch.tensor(KTO_M, dtype=torch.float64, requires_grad=True)
    value, _ = kto.loss(kto_errors(model), kto.Params(beta=10.0, lambda_u=2.0))
    value.backward()
    _, grads, _ = kto_hand(10.0, 1.0, 2.0)
    assert model.grad.tolist() == pytest.approx(grads)


def test_kto_reference_point_is_clamped_at_zero() -> None:
    e = Errors(
        model=torch.tensor([[0.3], [0.4]], dtype=torch.float64),
        ref=torch.tensor([[0.2], [0.2]], dtype=torch.float64),
        desirable=torch.tensor([True, False]),
    )
    value, metrics = kto.loss(e, kto.Params(beta=5.0))
    assert metrics["reference_point"].item() == 0.0
    expected = ((1 - sig(5.0 * -0.1)) + (1 - sig(-5.0 * -0.2))) / 2
    assert value.item() == pytest.approx(expected)


# -- SFT ------------------------------------------------------------------------------------


def test_sft_is_the_mean_per_sample_error_of_the_winners() -> None:
    pred = torch.tensor([[[[[1.0, 3.0]]]], [[[[2.0, 2.0]]]]])  # [B=2, G=1, C=1, H=1, W=2]
    e = Errors(model=denoising_error(pred, torch.zeros(1, 1, 2), n_batch_dims=2))
    value, metrics = sft.loss(e, sft.Params())
    assert value.item() == pytest.approx(((1 + 9) / 2 + (4 + 4) / 2) / 2)
    assert metrics["model_err"].item() == pytest.approx(value.item())
    assert sft.Params().labels == "winners"
