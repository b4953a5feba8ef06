"""The training loop on a tiny random backbone: DPO learns, references stay exact, resume works."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch
from tests.conftest import train_params

from diffpref import adapters, training
from diffpref.config import Objective, TrainParams
from diffpref.config.schema import _objective


def toy_data(backbone, n_prompts=6, k=2):
    torch.manual_seed(1)
    latents = torch.randn(n_prompts * k, 4, 8, 8)
    text = backbone.encode_text([f"prompt {i}" for i in range(n_prompts)])
    groups = torch.arange(n_prompts * k).view(n_prompts, k)
    return training.TrainData(
        latents=latents,
        text=text,
        uncond=backbone.encode_text([""]),
        groups=groups,
        prompt_rows=torch.arange(n_prompts),
    )


def dpo(beta=2500.0) -> Objective:
    return _objective("dpo", {"loss": "dpo", "beta": beta})


def tp(**kw) -> TrainParams:
    base = dict(
        steps=6, batch_size=4, lr=5e-3, warmup_steps=1, lora_rank=4, log_every=1, checkpoint_every=3
    )
    return train_params(**{**base, **kw})


def lora_state(unet):
    from peft.utils import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(unet).items()}


@torch.no_grad()
def fixed_dpo_loss(method, objective) -> float:
    """DPO loss over every pair at fixed timesteps and noise: comparable before and after."""
    from diffpref.objectives.base import Errors

    gen = torch.Generator().manual_seed(123)
    idx = torch.arange(method.data.groups.shape[0]).repeat(8)
    t = torch.randint(50, 950, (len(idx),), generator=gen)
    inp = method.inputs(method.data.groups[idx], method.data.prompt_rows[idx], t, gen)
    ref = method.reference_errors(inp)
    model = method.errors(inp)
    return float(objective.module.loss(Errors(model=model, ref=ref, t=t), objective.params)[0])


def test_dpo_training_lowers_the_dpo_loss_on_its_pairs(tiny_backbone, tmp_path):
    data = toy_data(tiny_backbone)
    obj = dpo()
    res = training.train(tiny_backbone, data, obj, tp(steps=25), 0, tmp_path / "ck", "h")
    after = fixed_dpo_loss(res.method, obj)
    # a fresh adapter (LoRA B = 0) equals the reference, so every pair starts at log 2
    assert after < math.log(2) - 0.05
    assert res.summary["trainable_params"] > 0 and res.summary["groups_per_s"] > 0
    assert [r["step"] for r in res.history] == list(range(1, 26))
    # the adapters are enabled and trainable after the loop's many reference passes
    assert all(p.requires_grad for n, p in tiny_backbone.unet.named_parameters() if "lora" in n)


def test_reference_is_the_base_model_exactly(tiny_backbone):
    unet = tiny_backbone.unet
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    c = tiny_backbone.encode_text(["a", "b"])["hidden"]
    base = unet(x, t, c).sample
    params = adapters.add_lora(unet, 4, None)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    with torch.no_grad(), adapters.adapters_disabled(unet):
        ref = unet(x, t, c).sample
    assert torch.allclose(ref, base, atol=1e-6)
    assert not torch.allclose(unet(x, t, c).sample, base, atol=1e-3)


def test_adapters_re_enabled_when_reference_forward_raises(tiny_backbone):
    unet = tiny_backbone.unet
    adapters.add_lora(unet, 4, None)
    with pytest.raises(RuntimeError), adapters.adapters_disabled(unet):
        raise RuntimeError("ref forward failed")
    assert all(p.requires_grad for n, p in unet.named_parameters() if "lora" in n)


def counting(monkeypatch, obj: Objective, fail_at: int | None = None) -> dict[str, int]:
    """Count the calls of ``obj``'s loss (one per training step), raising KeyboardInterrupt at
    call ``fail_at``: an interruption mid-run, and how many steps a run really executed."""
    calls = {"n": 0}
    real = getattr(obj.module.loss, "__wrapped__", obj.module.loss)  # not a counter's counter

    def loss(e, p):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return real(e, p)

    loss.__wrapped__ = real
    monkeypatch.setattr(obj.module, "loss", loss)
    return calls


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, caplog):
    """Resumed from its step-3 checkpoint, the run executes steps 4-6 only and ends with the
    uninterrupted run's weights and history; it says where it resumed from, and a newest
    checkpoint that is damaged (no params hash, written last) gives way to the older one.
    Starting over would give the same weights too: the steps run and the record tell."""
    from tests.conftest import TinyBackbone

    # a checkpoint (step 3) between two history rows (every 2 steps): resume logs the same means
    params = tp(log_every=2)
    full = TinyBackbone()
    full_res = training.train(full, toy_data(full), dpo(), params, 0, tmp_path / "a", "h")
    want = lora_state(full.unet)
    assert full_res.resumed_from is None
    assert (full_res.summary["resumed_from_step"], full_res.summary["steps_run"]) == (0, 6)

    crashed = TinyBackbone()
    obj = dpo()
    counting(monkeypatch, obj, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        training.train(crashed, toy_data(crashed), obj, params, 0, tmp_path / "b", "h")
    state = tmp_path / "b" / "state"
    # accelerate's save_state of the trainable state only: no model weights in the checkpoint
    assert {"optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "params_hash.txt"} <= {
        f.name for f in state.iterdir()
    }
    assert not [f for f in state.iterdir() if f.name.startswith("model")]
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    # b: a crash between the two renames of a checkpoint swap leaves only the previous folder;
    # c: the newest is damaged (no params hash, a truncated optimizer state) beside the older
    state.rename(tmp_path / "b" / "state.old")
    shutil.copytree(tmp_path / "c" / "state", tmp_path / "c" / "state.old")
    (tmp_path / "c" / "state" / "params_hash.txt").unlink()
    (tmp_path / "c" / "state" / "optimizer.bin").write_bytes(b"")

    for ck in ("b", "c"):
        resumed = TinyBackbone()
        calls = counting(monkeypatch, obj)
        with caplog.at_level(logging.INFO, "diffpref.training"):
            res = training.train(resumed, toy_data(resumed), obj, params, 0, tmp_path / ck, "h")
        got = lora_state(resumed.unet)
        assert calls["n"] == 3, ck  # steps 4, 5 and 6: the three before came from the checkpoint
        assert res.resumed_from == tmp_path / ck / "state.old"
        assert (res.summary["resumed_from_step"], res.summary["steps_run"]) == (3, 3)
        assert res.summary["steps"] == 6
        assert f"resumed from {tmp_path / ck / 'state.old'} at step 3 of 6" in caplog.text
        for k in want:  # bitwise: the same computations in the same order
            assert torch.equal(got[k], want[k]), (ck, k)
        assert res.history == full_res.history
    assert f"not resuming from {tmp_path / 'c' / 'state'}: incomplete" in caplog.text


def test_checkpoint_of_other_params_is_not_resumed(tmp_path):
    from tests.conftest import TinyBackbone

    a = TinyBackbone()
    training.train(a, toy_data(a), dpo(), tp(steps=4), 0, tmp_path / "c", "old")
    # a finished run leaves its last checkpoint (step 3); a different params hash ignores it
    b = TinyBackbone()
    res = training.train(b, toy_data(b), dpo(), tp(steps=2), 0, tmp_path / "c", "new")
    assert [r["step"] for r in res.history] == [1, 2]
    assert res.resumed_from is None and res.summary["steps_run"] == 2


def test_saved_lora_loads_into_a_fresh_unet(tiny_backbone, tmp_path):
    from tests.conftest import TinyBackbone

    training.train(
        tiny_backbone, toy_data(tiny_backbone), dpo(), tp(steps=3), 0, tmp_path / "k", "h"
    )
    adapters.save_lora(tiny_backbone.unet, tmp_path / "lora", 4, None)
    fresh = TinyBackbone()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    c = fresh.encode_text(["x"])["hidden"]
    before = fresh.unet(x, t, c).sample
    adapters.Adapted(fresh, tmp_path / "lora")
    after = fresh.unet(x, t, c).sample
    assert torch.allclose(after, tiny_backbone.unet(x, t, c).sample, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-4)


def test_shared_seed_streams_give_two_objectives_the_same_draws(tmp_path):
    """train.seed_streams shared: two objectives at the same training seed (here the same loss
    under two names) start from the same init and see the same batches, timesteps and noise,
    so they end with the same weights (common random numbers, what the report's pairing by
    seed rests on); independent: each name offsets its streams, and the weights differ."""
    from tests.conftest import TinyBackbone

    twin = _objective("dpo_twin", {"loss": "dpo", "beta": 2500.0})
    for streams, same in (("shared", True), ("independent", False)):
        weights = []
        for obj in (dpo(), twin):
            b = TinyBackbone()
            training.train(
                b,
                toy_data(b),
                obj,
                tp(steps=3, seed_streams=streams),
                0,
                tmp_path / streams / obj.name,
                "h",
            )
            weights.append(lora_state(b.unet))
        equal = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        assert equal is same, streams
    assert training.loop.stream_seed(7, "dpo", "shared") == 7
    assert (
        training.loop.stream_seed(7, "dpo", "independent")
        == training.loop.stream_seed(7, "dpo", "independent")
        != training.loop.stream_seed(7, "lair", "independent")
    )
