"""Online rounds' training side: round r starts from round r-1's LoRA, with it as the frozen
reference (a second adapter on the same UNet, no UNet copy); objectives that cannot are
refused; resume restores the same reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.conftest import TinyBackbone
from tests.test_training import counting, dpo, fixed_dpo_loss, lora_state, toy_data, tp

from diffpref import adapters, training
from diffpref.backbones.base import Backbone
from diffpref.config.schema import _objective


def previous_adapter(bb: Backbone, out: Path, rank: int = 4) -> Path:
    """A previous round's LoRA: an adapter moved off its init (B = 0 would be the base model),
    saved as training saves it."""
    torch.manual_seed(5)
    params = adapters.add_lora(bb.unet, rank, None)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    adapters.save_lora(bb.unet, out, rank, None, bb.lora_pipeline)
    return out


@torch.no_grad()
def predict(bb: Backbone) -> torch.Tensor:
    """The UNet's output on fixed (latents, t, cond)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, *bb.latent_shape, generator=gen).to(bb.dtype)
    return bb.predict(x, torch.tensor([3, 700]), bb.encode_text(["a red cube", "two cats"]))


def base_weights(unet) -> tuple[int, set[int]]:
    """The UNet's parameter count and the storage of its base (non-LoRA) weights."""
    return (
        sum(p.numel() for p in unet.parameters()),
        {p.data_ptr() for n, p in unet.named_parameters() if "lora_" not in n},
    )


def evaluated(make_backbone, prev: Path) -> torch.Tensor:
    """The previous round's model as evaluation loads it (:class:`adapters.Adapted`) on a fresh
    backbone: its outputs on the fixed inputs, checked to differ from the base's."""
    bb = make_backbone()
    base = predict(bb)
    adapters.Adapted(bb, prev)
    want = predict(bb)
    assert not torch.allclose(want, base, atol=1e-3)  # the previous round is not the base
    return want


def check_online_start(make_backbone, prev: Path, objective, params) -> training.GroupMethod:
    """On a fresh backbone, an online round's method: its reference (if it needs one) and its
    policy at step 0 are the previous round's model; the UNet grows by one LoRA per adapter,
    no base weight is copied."""
    want = evaluated(make_backbone, prev)

    bb = make_backbone()
    count, storage = base_weights(bb.unet)
    method = training.make_method(bb, objective, params, toy_data_for(bb), prev)
    torch.testing.assert_close(predict(bb), want, atol=1e-5, rtol=1e-5)
    n_adapters = 1
    if objective.module.NEEDS_REFERENCE:
        n_adapters = 2
        with method.reference.active():
            torch.testing.assert_close(predict(bb), want, atol=1e-5, rtol=1e-5)
        assert not any(r.requires_grad for r, _ in method.reference.pairs)
    else:
        assert method.reference is None and list(bb.unet.peft_config) == ["default"]
    lora = sum(v.numel() for v in adapters.read_lora(prev)[0].values())
    grown, after = base_weights(bb.unet)
    assert grown - count == n_adapters * lora
    assert after == storage  # the same base tensors: none duplicated, none replaced
    return method


def toy_data_for(bb: Backbone) -> training.TrainData:
    """Pairs on ``bb``'s latent shape and text encoder (the tiny and the SD1.5 backbones)."""
    torch.manual_seed(0)
    return training.TrainData(
        latents=torch.randn(6, *bb.latent_shape),
        text=bb.encode_text([f"prompt {i}" for i in range(3)]),
        uncond=bb.encode_text([""]),
        groups=torch.arange(6).view(3, 2),
        prompt_rows=torch.arange(3),
    )


@pytest.fixture(scope="module")
def prev(tmp_path_factory) -> Path:
    return previous_adapter(TinyBackbone(), tmp_path_factory.mktemp("round1"))


def test_online_round_reference_and_start_are_the_previous_policy(prev):
    method = check_online_start(TinyBackbone, prev, dpo(), tp())
    # at step 0 the policy is its reference: every pair's DPO loss is log 2
    assert fixed_dpo_loss(method, dpo()) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_reference_free_online_round_starts_from_the_previous_policy(prev):
    check_online_start(TinyBackbone, prev, _objective("m", {"loss": "mapo"}), tp())


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"loss": "softrepa", "n_tokens": 2}, "no LoRA policy"),
        ({"loss": "agsm", "n_tokens": 2}, "no LoRA policy"),
        ({"loss": "dpo", "beta": 2500, "rethinking": {"delta": 1.0}}, "moving reference"),
    ],
    ids=["softrepa", "agsm", "rethinking"],
)
def test_online_round_refuses_soft_tokens_and_rethinking(entry, why, prev, tmp_path):
    obj = _objective("x", entry)
    assert why in training.online_error(obj)
    bb = TinyBackbone()
    before = {n: p.clone() for n, p in bb.unet.named_parameters()}
    with pytest.raises(ValueError, match=why):
        training.train(bb, toy_data(bb), obj, tp(), 0, tmp_path / "ck", "h", previous=prev)
    assert not hasattr(bb.unet, "peft_config")  # refused before any adapter was added
    assert all(torch.equal(p, before[n]) for n, p in bb.unet.named_parameters())


def test_online_round_accepts_lora_objectives():
    for entry in ({"loss": "dpo", "beta": 1}, {"loss": "mapo"}, {"loss": "kto", "beta": 1}):
        assert training.online_error(_objective("x", entry)) is None


def test_online_round_of_another_rank_is_refused(prev, tmp_path):
    bb = TinyBackbone()
    with pytest.raises(ValueError) as e:
        training.make_method(bb, dpo(), tp(lora_rank=8), toy_data(bb), prev)
    msg = str(e.value)
    assert str(prev / adapters.LORA_FILE) in msg
    assert "rank 4" in msg and "train.lora_rank is 8" in msg


def test_interrupted_online_round_resumes_to_the_same_weights(prev, tmp_path, monkeypatch):
    """The reference is not in the checkpoint; the resumed run reloads it from ``previous``
    and ends bitwise where the uninterrupted run ends, after running steps 4-6 only."""
    params = tp()
    full = TinyBackbone()
    res = training.train(full, toy_data(full), dpo(), params, 0, tmp_path / "a", "h", previous=prev)
    want = lora_state(full.unet)
    assert "ref" not in res.method.state()
    with res.method.reference.active():  # the reference stayed the previous round's model
        torch.testing.assert_close(predict(full), evaluated(TinyBackbone, prev))
    fixed = res.method.reference.state()
    assert not torch.allclose(predict(full), evaluated(TinyBackbone, prev), atol=1e-4)

    obj = dpo()
    counting(monkeypatch, obj, fail_at=5)
    crashed = TinyBackbone()
    with pytest.raises(KeyboardInterrupt):
        training.train(crashed, toy_data(crashed), obj, params, 0, tmp_path / "b", "h", prev)
    calls = counting(monkeypatch, obj)
    again = TinyBackbone()
    res = training.train(again, toy_data(again), obj, params, 0, tmp_path / "b", "h", prev)
    assert calls["n"] == 3 and res.summary["resumed_from_step"] == 3
    got = lora_state(again.unet)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # reloaded from ``previous``, the reference is the one the uninterrupted run had
    assert all(torch.equal(a, b) for a, b in zip(res.method.reference.state(), fixed))


def test_the_compute_matched_control_continues_the_adapter_with_the_base_as_reference(prev):
    """``previous_reference=False`` (the control: round 1 continued offline): the policy
    starts at the previous adapter, the reference stays the base model (adapters disabled),
    so the first DPO step does not see a zero margin."""
    want = evaluated(TinyBackbone, prev)
    bb = TinyBackbone()
    base = predict(bb)
    method = training.make_method(bb, dpo(), tp(), toy_data_for(bb), prev, False)
    torch.testing.assert_close(predict(bb), want, atol=1e-5, rtol=1e-5)
    assert method.reference is None and list(bb.unet.peft_config) == ["default"]
    with adapters.adapters_disabled(bb.unet):
        torch.testing.assert_close(predict(bb), base)
