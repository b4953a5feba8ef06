"""Rethinking-DPO hooks: timestep sampler, reward scale, divergence, reference schedule."""

from __future__ import annotations

import math

import pytest
import torch

from diffpref.objectives import rethinking


def sd_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """Stable Diffusion's ``scaled_linear`` schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_bin_probabilities_are_geometric_with_bin0_noisiest() -> None:
    p = rethinking.timestep_bin_probs(10, 0.9)
    total = sum(0.9**k for k in range(10))
    assert p.tolist() == pytest.approx([0.9**k / total for k in range(10)])
    assert p[0].item() == pytest.approx(0.15353, abs=1e-5)
    assert (p[0] / p[9]).item() == pytest.approx(0.9**-9)
    assert rethinking.timestep_bin_probs(4, 1.0).tolist() == pytest.approx([0.25] * 4)


def test_bin_zero_holds_the_highest_timesteps() -> None:
    t = torch.tensor([999, 900, 899, 100, 99, 0])
    assert rethinking.timestep_bin(t, 1000, 10).tolist() == [0, 0, 1, 8, 9, 9]


def test_sampled_timesteps_follow_bin_frequencies() -> None:
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    t = rethinking.sample_timesteps(n, 1000, 10, 0.9, generator=gen)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    counts = torch.bincount(rethinking.timestep_bin(t, 1000, 10), minlength=10).double() / n
    assert counts.tolist() == pytest.approx(
        rethinking.timestep_bin_probs(10, 0.9).tolist(), abs=5e-3
    )
    noisiest = t[t >= 900].double()
    assert noisiest.mean().item() == pytest.approx(949.5, abs=1.0)  # uniform within the bin
    assert len(torch.unique(noisiest)) == 100


def test_sampled_timesteps_cover_unequal_bins_and_are_reproducible() -> None:
    t1 = rethinking.sample_timesteps(50_000, 1000, 3, 0.5, torch.Generator().manual_seed(1))
    t2 = rethinking.sample_timesteps(50_000, 1000, 3, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2)
    assert int(t1.min()) == 0 and int(t1.max()) == 999
    assert (t1 >= 667).double().mean().item() == pytest.approx(1 / 1.75, abs=1e-2)


def test_reward_scale_is_one_plus_minmax_inverse_sqrt_snr() -> None:
    acp = sd_alphas_cumprod()
    t = torch.arange(1000)
    lam = rethinking.reward_scale(acp, t)
    assert lam.min().item() == pytest.approx(1.0) and lam.max().item() == pytest.approx(2.0)
    assert bool((lam[1:] > lam[:-1]).all())  # larger at noisier (larger t) steps
    a = acp.tolist()
    inv = [math.sqrt((1 - x) / x) for x in (a[0], a[500], a[999])]
    expected = 1 + (inv[1] - inv[0]) / (inv[2] - inv[0])
    assert rethinking.reward_scale(acp, torch.tensor([500])).item() == pytest.approx(expected)


def test_divergence_is_T_times_mean_error_gap_without_grad() -> None:
    ref = torch.tensor([0.3, 0.5], requires_grad=True)
    d = rethinking.divergence(ref, torch.tensor([0.2, 0.2]), num_train_timesteps=1000)
    assert d.item() == pytest.approx(1000 * (0.1 + 0.3) / 2)
    assert not d.requires_grad


def test_reference_schedule_copies_every_tau_then_freezes_for_good() -> None:
    values = iter([0.0, 0.2, 0.6, 0.1])
    calls: list[int] = []

    def divergence_fn() -> float:
        calls.append(1)
        return next(values)

    sched = rethinking.ReferenceSchedule(tau=3, delta=0.5)
    actions = {step: sched.step(step, divergence_fn) for step in range(0, 21)}
    assert {s: a for s, a in actions.items() if a} == {3: "copy", 6: "copy", 9: "freeze"}
    assert sched.history == [(3, 0.0), (6, 0.2), (9, 0.6)]  # D logged at every check
    assert len(calls) == 3  # never measured (nor copied) again once frozen
    assert sched.frozen and sched.frozen_at == 9 and sched.last_divergence == 0.6


def test_reference_schedule_never_freezes_below_delta() -> None:
    sched = rethinking.ReferenceSchedule(tau=2, delta=1.0)
    actions = [sched.step(s, lambda: torch.tensor(0.5)) for s in range(1, 11)]
    assert actions == [None, "copy"] * 5
    assert not sched.frozen
