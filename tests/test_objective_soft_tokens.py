"""SoftREPA and AGSM (soft-token objectives over an image × caption batch)."""

from __future__ import annotations

import math

import pytest
import torch

from diffpref.objectives import agsm, softrepa


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    ex = [math.exp(x - m) for x in xs]
    return [v / sum(ex) for v in ex]


# -- SoftREPA -------------------------------------------------------------------------------


def test_softrepa_error_matrix_is_a_per_pair_mean() -> None:
    pred = torch.tensor([[[[[1.0, 3.0]]], [[[0.0, 0.0]]]], [[[[2.0, 0.0]]], [[[1.0, 1.0]]]]])
    err = softrepa.error_matrix(pred, torch.tensor([[[1.0, 1.0]]]))  # shared noise [C, H, W]
    assert err.tolist() == [[2.0, 1.0], [1.0, 0.0]]


def test_softrepa_loss_by_hand() -> None:
    err = [[0.10, 0.30], [0.20, 0.05]]
    p = softrepa.Params(scale=4.0, temp=0.07, dweight=10.0)
    value, metrics = softrepa.loss(torch.tensor(err, dtype=torch.float64), p)
    logits = [[4.0 * math.exp(-e / 0.07) for e in row] for row in err]
    ce = [-math.log(softmax(logits[i])[i]) for i in range(2)]
    assert value.item() == pytest.approx(sum(ce) / 2 + 10.0 * (0.10 + 0.05) / 2)
    assert metrics["contrastive_acc"].item() == 1.0
    assert metrics["neg_err"].item() == pytest.approx(0.25)


# -- AGSM -----------------------------------------------------------------------------------


def scalar_batch(values: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64).reshape(2, 2, 1, 1, 1)
    return t.requires_grad_(requires_grad)


EPS = 0.5
EMA = [[0.6, 0.0], [0.2, 1.0]]
PRED = [[0.4, 0.9], [0.3, 1.2]]


def agsm_targets(gamma_pos: float, gamma_neg: float) -> tuple[list[list[float]], list[float]]:
    targets, matched_w = [], []
    for i in range(2):
        w = softmax([-((e - EPS) ** 2) for e in EMA[i]])  # one element: sum = mean
        guided = sum(wk * ek for wk, ek in zip(w, EMA[i], strict=True))
        row = []
        for j in range(2):
            delta = EMA[i][j] - guided
            row.append(EPS + gamma_pos * delta if i == j else EPS - gamma_neg * delta)
        targets.append(row)
        matched_w.append(w[i])
    return targets, matched_w


def test_agsm_loss_regresses_to_the_tilted_target() -> None:
    p = agsm.Params(gamma_pos=1.0, gamma_neg=0.5)
    pred = scalar_batch(PRED, requires_grad=True)
    ema = scalar_batch(EMA, requires_grad=True)
    value, metrics = agsm.loss(pred, ema, torch.tensor([[[EPS]]], dtype=torch.float64), p)
    tgt, matched_w = agsm_targets(1.0, 0.5)
    sq = [(PRED[i][j] - tgt[i][j]) ** 2 for i in range(2) for j in range(2)]
    assert value.item() == pytest.approx(sum(sq) / 4)
    assert metrics["pl_weight_matched"].item() == pytest.approx(sum(matched_w) / 2)
    value.backward()
    assert ema.grad is None  # the target is a stop-gradient
    grads = [2 * (PRED[i][j] - tgt[i][j]) / 4 for i in range(2) for j in range(2)]
    assert pred.grad.flatten().tolist() == pytest.approx(grads)


def test_agsm_default_temperature_reproduces_the_papers_sum_reduction() -> None:
    # Two elements per latent: the paper's -‖ema - ε‖² is twice our per-element mean.
    ema = torch.tensor([[[0.6, 0.4], [0.0, 0.2]], [[0.2, 0.1], [1.0, 0.9]]], dtype=torch.float64)
    ema = ema.reshape(2, 2, 1, 1, 2)
    noise = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)
    sums = [
        [sum((v - 0.5) ** 2 for v in ema[i, j].flatten().tolist()) for j in range(2)]
        for i in range(2)
    ]
    _, m_paper = agsm.loss(ema.clone(), ema, noise, agsm.Params())
    w_paper = [softmax([-s for s in sums[i]])[i] for i in range(2)]
    assert m_paper["pl_weight_matched"].item() == pytest.approx(sum(w_paper) / 2)
    _, m_temp = agsm.loss(ema.clone(), ema, noise, agsm.Params(pl_temperature=0.1))
    w_temp = [softmax([-s / 2 / 0.1 for s in sums[i]])[i] for i in range(2)]
    assert m_temp["pl_weight_matched"].item() == pytest.approx(sum(w_temp) / 2)


def test_agsm_zero_gammas_reduce_to_plain_denoising() -> None:
    pred = scalar_batch(PRED)
    value, metrics = agsm.loss(
        pred,
        scalar_batch(EMA),
        torch.tensor(EPS, dtype=torch.float64),
        agsm.Params(gamma_pos=0.0, gamma_neg=0.0),
    )
    assert value.item() == pytest.approx(sum((v - EPS) ** 2 for r in PRED for v in r) / 4)
    assert metrics["delta_abs"].item() > 0


def test_ema_update() -> None:
    ema, param = [torch.tensor([1.0, 0.0])], [torch.tensor([3.0, 1.0], requires_grad=True)]
    agsm.ema_update(ema, param, decay=0.9)
    assert ema[0].tolist() == pytest.approx([0.9 * 1.0 + 0.1 * 3.0, 0.1 * 1.0])
    assert not ema[0].requires_grad
