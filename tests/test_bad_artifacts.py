"""A truncated, foreign or missing artifact in results/: an error naming the file and the
commands that restore it, exit code 2; and those commands, run by real DVC and Snakemake in
tiny projects, do restore it."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from tests.conftest import REPO, TinyBackbone
from tests.project import sh

from diffpref.adapters import LORA_FILE, TOKENS_FILE, Adapted
from diffpref.cli import main
from diffpref.io import (
    InputError,
    load_array,
    load_tensors,
    read_json,
    read_table,
    stage_output,
)

REWARDS = pd.DataFrame(
    {
        "prompt_id": ["a", "a", "b", "b"],
        "cand_idx": [0, 1, 0, 1],
        "reward": "fidelity",
        "score": [0.9, 0.1, 0.2, 0.8],
    }
)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


UNREADABLE = "unreadable: truncated, or not a parquet file (ArrowInvalid: "
DAMAGE = {  # how the file is damaged, what the error says about it
    "truncated": (truncate, UNREADABLE),
    "foreign": (lambda p: p.write_text("prompt_id,score\na,0.9\n"), UNREADABLE),  # a CSV
    "other_columns": (
        lambda p: REWARDS.drop(columns="score").to_parquet(p),
        "missing columns ['score'] (has ['prompt_id', 'cand_idx', 'reward'])",
    ),
    "missing": (lambda p: p.unlink(), "missing. "),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_artifact_exits_2_naming_it_and_how_to_restore_it(
    tmp_path, capsys, monkeypatch, damage
):
    monkeypatch.setenv("DIFFPREF_MLFLOW", "0")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    artifact = tmp_path / "results" / "rewards" / "rewards.parquet"
    artifact.parent.mkdir(parents=True)
    REWARDS.to_parquet(artifact)
    spoil, problem = DAMAGE[damage]
    spoil(artifact)
    assert main(["labels", "--params", str(tmp_path / "params.yaml"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    out = artifact.parent
    assert err.startswith(f"error: {artifact}: {problem}")
    assert f"Rerun the stage that writes {out}: `dvc checkout --force {out}`" in err
    assert f"`snakemake --force {out}`" in err
    assert not (tmp_path / "results" / "labels").exists()


READERS = {  # artifact: (writer, reader, what the error calls it)
    "candidates/latents.safetensors": (
        lambda p: save_file({"latents": torch.ones(4, 4)}, p),
        load_tensors,
        "safetensors",
    ),
    "candidates/images.npy": (lambda p: np.save(p, np.ones((4, 3, 8, 8))), load_array, "npy"),
    "eval/dpo/seed0/round1/metrics.json": (lambda p: p.write_text('{"a": 1}'), read_json, "JSON"),
}


@pytest.mark.parametrize("artifact", READERS)
def test_every_artifact_reader_names_a_truncated_file_and_how_to_restore_it(tmp_path, artifact):
    write, read, kind = READERS[artifact]
    path = tmp_path / "results" / artifact
    path.parent.mkdir(parents=True)
    write(path)
    read(path)
    truncate(path)
    with pytest.raises(InputError) as e:
        read(path)
    out = stage_output(path)
    assert str(e.value).startswith(f"{path}: unreadable: truncated, or not a {kind} file (")
    assert f"`dvc checkout --force {out}`" in str(e.value)


def test_a_truncated_image_array_stops_the_rewards_stage_before_any_model(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("DIFFPREF_MLFLOW", "0")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cands = tmp_path / "results" / "candidates"
    cands.mkdir(parents=True)
    REWARDS[["prompt_id", "cand_idx"]].to_parquet(cands / "candidates.parquet")
    pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["x", "y"]}).to_parquet(
        cands / "prompts.parquet"
    )
    np.save(cands / "images.npy", np.zeros((4, 3, 8, 8), np.uint8))
    truncate(cands / "images.npy")
    # no world: loading the world's reward models would fail differently
    assert main(["rewards", "--params", str(tmp_path / "params.yaml"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cands / 'images.npy'}: unreadable: truncated, or not a npy")
    assert f"`dvc checkout --force {cands}`" in err
    assert not (tmp_path / "results" / "rewards").exists()


@pytest.mark.parametrize("name", [LORA_FILE, TOKENS_FILE])
def test_a_truncated_adapter_names_the_file_and_its_training_job(tmp_path, name):
    # an objective named 'labels'
    folder = tmp_path / "results" / "adapters" / "labels" / "seed0" / "round1"
    folder.mkdir(parents=True)
    save_file({"tokens": torch.ones(4, 16)}, folder / name)
    truncate(folder / name)
    with pytest.raises(InputError) as e:
        Adapted(TinyBackbone(), folder)
    assert str(e.value).startswith(f"{folder / name}: unreadable: truncated, or not a ")
    assert f"`dvc checkout --force {folder}`" in str(e.value)


@pytest.mark.parametrize(
    ("inside", "output"),
    [
        ("world/rewards/fidelity/model.safetensors", "world"),
        ("world/base/unet/diffusion_pytorch_model.safetensors", "world"),
        ("prompts/train.parquet", "prompts"),
        ("labels/pairwise.parquet", "labels"),
        ("adapters/rewards/seed2/round1/soft_tokens.safetensors", "adapters/rewards/seed2/round1"),
        ("eval/base/scores.parquet", "eval/base"),
        ("eval/dpo/seed0/round1/scores.parquet", "eval/dpo/seed0/round1"),
        (
            "adapters/dpo/seed1/matched3/pytorch_lora_weights.safetensors",
            "adapters/dpo/seed1/matched3",
        ),
        ("online/dpo/seed0/round2/labels/pairwise.parquet", "online/dpo/seed0/round2/labels"),
    ],
)
def test_stage_output_is_the_folder_dvc_and_snakemake_track(inside, output):
    results = Path("project/results")
    assert stage_output(results / inside) == results / output


def advice(error: InputError, command: str) -> list[str]:
    """The full command starting with ``command`` that the error message gives."""
    return shlex.split(re.search(rf"`({command} [^`]+)`", str(error)).group(1))


WRITE = (
    f"{sys.executable} -c \"import pandas as pd, pathlib; p = pathlib.Path('results/rewards'); "
    "p.mkdir(parents=True, exist_ok=True); pd.DataFrame({'score': [0.9, 0.1]})"
    ".to_parquet(p / 'rewards.parquet')\""
)


def damage(root: Path) -> tuple[pd.DataFrame, InputError]:
    """The tool's good output, then the error that its truncated copy gives."""
    artifact = Path("results/rewards/rewards.parquet")
    good = read_table(root / artifact, ["score"])
    truncate(root / artifact)
    with pytest.raises(InputError) as e:
        read_table(artifact, ["score"])  # relative, as a stage run from the project root reads
    return good, e.value


def test_dvc_checkout_named_in_the_error_restores_a_truncated_output(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    stage = {"stages": {"rewards": {"cmd": WRITE, "outs": ["results/rewards"]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump(stage))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        sh(cmd, root)
    monkeypatch.chdir(root)
    good, error = damage(root)
    assert "modified" in sh(["dvc", "status"], root)  # DVC notices the damage by its hash
    sh(advice(error, "dvc checkout"), root)
    pd.testing.assert_frame_equal(read_table(root / "results/rewards/rewards.parquet", []), good)


def test_snakemake_force_named_in_the_error_rewrites_a_truncated_output(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    (root / "Snakefile").write_text(
        'rule rewards:\n    output: directory("results/rewards")\n'
        f"    shell: {WRITE.replace('{', '{{').replace('}', '}}')!r}\n"
    )
    sh(["snakemake", "-c1", "results/rewards"], root)
    monkeypatch.chdir(root)
    good, error = damage(root)
    # Snakemake compares times, not contents: a damaged output looks up to date
    assert "Nothing to be done" in sh(["snakemake", "-c1", "results/rewards"], root)
    sh([*advice(error, "snakemake"), "-c1"], root)
    pd.testing.assert_frame_equal(read_table(root / "results/rewards/rewards.parquet", []), good)
