"""Every objective family through the one loop on a tiny random backbone: LoRA groups with
the Rethinking/ReNoise hooks, listwise and pointwise units, and soft tokens."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import TinyBackbone, train_params

from diffpref import adapters, training
from diffpref.config import TrainParams
from diffpref.config.schema import _objective


def data_for(backbone, labels: str, n_prompts: int = 6, k: int = 3) -> training.TrainData:
    torch.manual_seed(2)
    latents = torch.randn(n_prompts * k, 4, 8, 8)
    text = backbone.encode_text([f"prompt {i}" for i in range(n_prompts)])
    extras = {}
    if labels in ("pairwise", "smoothed"):
        groups = torch.stack([torch.arange(n_prompts) * k, torch.arange(n_prompts) * k + 1], 1)
        if labels == "smoothed":
            extras["prob"] = torch.linspace(0.55, 0.7, n_prompts)
    elif labels == "listwise":
        groups = torch.arange(n_prompts * k).view(n_prompts, k)
        a = torch.softmax(torch.randn(n_prompts, k), 1) - 1 / k
        extras["advantage"] = a
    elif labels == "pointwise":
        groups = torch.arange(n_prompts * k).view(-1, 1)
        extras["desirable"] = torch.arange(n_prompts * k) % 2 == 0
        return training.TrainData(
            latents,
            text,
            backbone.encode_text([""]),
            groups,
            torch.arange(n_prompts * k) // k,
            extras,
        )
    else:  # winners / captions: one image per prompt
        groups = (torch.arange(n_prompts) * k).view(-1, 1)
    return training.TrainData(
        latents, text, backbone.encode_text([""]), groups, torch.arange(n_prompts), extras
    )


def tp(**kw) -> TrainParams:
    return train_params(
        **{
            "steps": 4,
            "batch_size": 3,
            "lr": 1e-2,
            "warmup_steps": 1,
            "lora_rank": 4,
            "log_every": 1,
            "checkpoint_every": 2,
            **kw,
        }
    )


@pytest.mark.parametrize(
    "entry",
    [
        {"loss": "mapo"},
        {"loss": "mapo", "param": "paper"},
        {"loss": "smpo", "beta": 2000, "inversion_steps": 0},
        {"loss": "lair", "beta": 250},
        {"loss": "kto", "beta": 1000},
        {"loss": "sft"},
        {"loss": "dpo", "beta": 2500, "variant": "hinge"},
        {"loss": "dpo", "beta": 2500, "variant": "ipo"},
    ],
    ids=lambda e: "-".join(str(v) for v in e.values()),
)
def test_group_objectives_train_and_move_the_adapter(entry, tmp_path):
    bb = TinyBackbone()
    obj = _objective("x", entry)
    res = training.train(bb, data_for(bb, obj.labels), obj, tp(), 0, tmp_path, "h")
    assert len(res.history) == 4 and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in res.history
    )
    lora_b = [p for n, p in bb.unet.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapter left its zero init


def test_smpo_renoise_uses_inverted_inputs(tmp_path, monkeypatch):
    import diffpref.training.methods as tr

    calls = []
    real = tr.renoise_invert
    monkeypatch.setattr(tr, "renoise_invert", lambda *a, **k: calls.append(1) or real(*a, **k))
    bb = TinyBackbone()
    obj = _objective("s", {"loss": "smpo", "beta": 2000, "inversion_steps": 3})
    method = training.make_method(bb, obj, tp(), data_for(bb, "smoothed"))
    assert method.grid.tolist() == sorted(method.grid.tolist()) and len(method.grid) == 3
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([999, 0])  # one sample above the grid, one at its first point
    inp = method.inputs(method.data.groups[:2], method.data.prompt_rows[:2], t, gen)
    assert calls
    x0 = method.data.latents[method.data.groups[1]]
    assert torch.allclose(inp.x_t[2:], x0)  # t at or below the first grid point: x̃_t = x0
    a = bb.noise_scheduler.alphas_cumprod[999]
    x0w = method.data.latents[method.data.groups[0]]
    assert torch.allclose(
        inp.x_t[:2], a.sqrt() * x0w + (1 - a).sqrt() * inp.target[:2], atol=1e-4
    )  # self-consistent (input, target) at the sampled t


def test_rethinking_reference_copies_the_policy_every_tau_steps(tmp_path):
    bb = TinyBackbone()
    obj = _objective(
        "r",
        {
            "loss": "dpo",
            "beta": 2500,
            "rethinking": {
                "reference_every": 2,
                "delta": 1e6,
                "timestep_bins": 10,
                "timestep_gamma": 0.5,
            },
        },
    )
    res = training.train(bb, data_for(bb, "pairwise"), obj, tp(steps=6, lr=5e-2), 0, tmp_path, "h")
    sched = res.method.schedule
    assert [s for s, _ in sched.history] == [2, 4, 6] and not sched.frozen
    assert sched.history[0][1] == pytest.approx(0.0, abs=1e-6)  # ref is still the base at step 2
    assert sched.history[1][1] != pytest.approx(0.0, abs=1e-6)  # then it holds a trained copy
    logged = [r.get("ref_divergence") is not None for r in res.history]
    assert logged == [False, True, False, True, False, True]
    # the last check copied the final policy into the reference adapter
    policy = [p for _, p in res.method.reference.pairs]
    ref = res.method.reference.state()
    assert all(torch.equal(a, b) for a, b in zip(ref, policy))


def test_rethinking_reference_freezes_above_delta(tmp_path, monkeypatch):
    bb = TinyBackbone()
    obj = _objective(
        "r", {"loss": "dpo", "beta": 2500, "rethinking": {"reference_every": 1, "delta": 0.5}}
    )
    method = training.make_method(bb, obj, tp(), data_for(bb, "pairwise"))
    values = iter([0.1, 0.9, 5.0])
    monkeypatch.setattr(method, "divergence", lambda gen: next(values))
    gen = torch.Generator()
    assert method.after_step(1, gen) == {"ref_divergence": 0.1, "ref_frozen": 0.0}
    frozen_ref = None
    assert method.after_step(2, gen) == {"ref_divergence": 0.9, "ref_frozen": 1.0}
    frozen_ref = method.reference.state()
    with torch.no_grad():
        for _, pol in method.reference.pairs:
            pol.add_(1.0)
    assert method.after_step(3, gen) == {}  # frozen: no further checks or copies
    assert all(torch.equal(a, b) for a, b in zip(method.reference.state(), frozen_ref))


def test_rethinking_timesteps_are_skewed_to_noisy_steps():
    bb = TinyBackbone()
    obj = _objective(
        "r", {"loss": "dpo", "beta": 2500, "rethinking": {"delta": 5.0, "timestep_gamma": 0.5}}
    )
    method = training.make_method(bb, obj, tp(), data_for(bb, "pairwise"))
    t = method.sample_t(4000, torch.Generator().manual_seed(0))
    assert (t >= 900).float().mean() > 0.45  # bin 0 has probability ~0.5 at gamma 0.5


@pytest.mark.parametrize("loss", ["softrepa", "agsm"])
def test_soft_tokens_train_with_a_frozen_backbone(loss, tmp_path):
    bb = TinyBackbone()
    before = {n: p.clone() for n, p in bb.unet.named_parameters()}
    obj = _objective(loss, {"loss": loss, "n_tokens": 2})
    res = training.train(bb, data_for(bb, "captions"), obj, tp(), 0, tmp_path / "ck", "h")
    assert all(torch.equal(p, before[n]) for n, p in bb.unet.named_parameters())
    assert res.summary["trainable_params"] == (2 if loss == "agsm" else 1) * 2 * 16
    res.method.save(tmp_path)
    tok = load_file(tmp_path / adapters.TOKENS_FILE)
    assert tok["tokens"].shape == (2, 16)
    init = bb.encode_text([""])["hidden"][0, 0]
    assert not torch.allclose(tok["tokens"][0], init)  # moved from the empty-prompt init
    # evaluation puts the tokens after the first token, in both CFG branches
    adapted = adapters.Adapted(bb, tmp_path)
    c = adapted.cond(bb.encode_text(["a prompt"]))
    assert c["hidden"].shape == (1, 4 + 2, 16)
    assert torch.allclose(c["hidden"][0, 1:3], tok["tokens"])


def test_soft_token_training_resumes_exactly(tmp_path, monkeypatch):
    full = TinyBackbone()
    obj = _objective("a", {"loss": "agsm", "n_tokens": 2})
    want = training.train(
        full, data_for(full, "captions"), obj, tp(), 0, tmp_path / "a", "h"
    ).method.state()
    crashed = TinyBackbone()
    calls = {"n": 0}
    real = obj.module.caption_loss

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(obj.module, "caption_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        training.train(crashed, data_for(crashed, "captions"), obj, tp(), 0, tmp_path / "b", "h")
    calls["n"] = -100  # counts on, never fails again
    again = TinyBackbone()
    res = training.train(again, data_for(again, "captions"), obj, tp(), 0, tmp_path / "b", "h")
    got = res.method.state()
    for a, b in zip(want["tokens"] + want["ema"], got["tokens"] + got["ema"]):
        assert torch.allclose(a, b, atol=1e-6)
    # resumed, not started over (which would give the same tokens): steps 3 and 4 only
    assert calls["n"] == -100 + 2
    assert res.resumed_from == tmp_path / "b" / "state"
    assert (res.summary["resumed_from_step"], res.summary["steps_run"]) == (2, 2)
