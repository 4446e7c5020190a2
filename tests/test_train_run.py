"""`iamt train`: the run directory it writes, reruns, refusals, determinism, and the demo."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cluster.cli import main
from cluster.config import RunConfig, load_config, parse_config
from iamt.checkpoint import load_checkpoint, save_checkpoint
from iamt.config import ConfigError
from iamt.data import Split, as_tensors, load_split
from iamt.vocabulary import NORMAL
from iamt.workflow import RunDirectoryError, adopt_checkpoint
from robustness.gradients import gradient_statistics
from robustness.runner import TrainRunSummary, load_trained, train_run
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): _sha(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_the_run_directory_holds_everything(tiny_run: TrainRunSummary) -> None:
    run_dir = tiny_run.run_dir
    for name in [
        "config.yaml",
        "manifest.json",
        "checkpoints/normal.safetensors",
        "checkpoints/normal.json",
        "importance.csv",
        "clean.csv",
    ]:
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["variants"] == {"normal": "identity", "emphasized": "topk:k=4,alpha=2"}
    assert set(manifest["localisation_ratio"]) == {"shape", "colour", "size", "background"}
    assert manifest["environment"]["versions"]["torch"]
    assert manifest["timings"]["train_s"] > 0

    importance = pd.read_csv(run_dir / "importance.csv")
    assert len(importance) == 4 * 16  # attributes × channels
    assert sorted(importance.groupby("attribute")["rank"].max().unique()) == [16]

    clean = pd.read_csv(run_dir / "clean.csv")
    assert set(clean["variant"]) == {"normal", "emphasized"}
    assert len(clean) == 2 * 4
    assert (clean["n"] == 128).all()
    assert (clean["ci_low"] <= clean["accuracy"]).all()
    assert (clean["accuracy"] <= clean["ci_high"]).all()
    assert ((clean["correct"] / clean["n"] - clean["accuracy"]).abs() < 1e-6).all()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert parse_config(saved) == parse_config(TINY)


def test_rerun_reuses_the_checkpoint_and_reproduces_the_files(
    tiny_run: TrainRunSummary, tiny_config: RunConfig
) -> None:
    before = _snapshot(tiny_run.run_dir)
    again = train_run(tiny_config, tiny_run.run_dir, show_progress=False)
    assert not again.trained
    after = _snapshot(tiny_run.run_dir)
    for name in ["checkpoints/normal.safetensors", "importance.csv", "clean.csv", "config.yaml"]:
        assert after[name] == before[name], name


def test_training_is_deterministic(tmp_path: Path, tiny_run: TrainRunSummary) -> None:
    config = parse_config(TINY)
    train_run(config, tmp_path / "again", show_progress=False)
    for name in ["checkpoints/normal.safetensors", "clean.csv", "importance.csv"]:
        assert _sha(tmp_path / "again" / name) == _sha(tiny_run.run_dir / name), name


def test_a_changed_config_is_refused_and_the_run_left_untouched(
    tiny_run: TrainRunSummary,
) -> None:
    before = _snapshot(tiny_run.run_dir)
    changed = parse_config({**TINY, "seed": 4, "train": {**TINY["train"], "epochs": 2}})
    with pytest.raises(RunDirectoryError) as caught:
        train_run(changed, tiny_run.run_dir, show_progress=False)
    assert "seed: 3 -> 4" in str(caught.value)
    assert "train.epochs: 1 -> 2" in str(caught.value)
    assert "--force" in str(caught.value)
    assert _snapshot(tiny_run.run_dir) == before


@pytest.mark.parametrize(
    ("variants", "fragment"),
    [
        ({"e": "topk:k=99,alpha=2"}, "k=99 is larger than the number of feature channels (16)"),
        ({"e": "emph:k=2"}, "unknown mask transform 'emph'"),
        ({"normal": "topk:k=2,alpha=2"}, "'normal' is reserved"),
    ],
)
def test_bad_variants_fail_before_anything_is_written(
    tmp_path: Path, variants: dict[str, str], fragment: str
) -> None:
    config = parse_config({**TINY, "emphasis": {"variants": variants}})
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        train_run(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_user_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["train", str(REPO / "configs/demo.yaml"), "--out", str(out), "--set", "x.y=1"])
    assert code == 2
    assert "unknown key 'x'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_trains_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and "localisation" in printed
    assert (out / "clean.csv").is_file()


@pytest.mark.e2e
def test_demo_config_meets_the_acceptance_bar(tmp_path: Path) -> None:
    """The shipped demo: ≥ 0.95 clean accuracy on every attribute, the emphasized variant
    within 2 points, and masks that sit on the object (localisation ≥ 1.5)."""
    config = load_config(REPO / "configs/demo.yaml", ["train.num_threads=2"])
    summary = train_run(config, tmp_path / "demo", show_progress=False)
    accuracy = summary.clean.pivot(index="attribute", columns="variant", values="accuracy")
    assert (accuracy["normal"] >= 0.95).all(), accuracy
    assert ((accuracy["normal"] - accuracy["emphasized"]).abs() <= 0.02).all(), accuracy
    for attribute in ["shape", "colour", "size"]:
        assert summary.localisation[attribute] >= 1.5, summary.localisation
    # Background texture lives outside the object: its masks must not prefer the object.
    assert summary.localisation["background"] < summary.localisation["shape"]
    # Its input gradients are live (the masking flag's counterpart to a quantized model).
    model, _ = load_trained(summary.run_dir)
    images, labels = as_tensors(load_split(config.data, Split.TEST, config.seed), 200)
    names = list(model.architecture.attribute_names)
    stats = gradient_statistics({NORMAL: model}, images, labels, names, batch_size=100)
    dead = stats["gradient_zero_fraction"] + stats["gradient_nonfinite_fraction"]
    assert (dead <= 0.02).all(), stats


def test_a_changed_robustness_section_does_not_block_training(
    tiny_run: TrainRunSummary, tmp_path: Path
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, run_dir)
    edited = {**TINY, "robustness": {"noise": {"n_samples": 7}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(edited))
    again = train_run(parse_config(TINY), run_dir, show_progress=False)
    assert not again.trained  # the checkpoint of the same training config is reused


def test_mask_samples_are_readable_without_torch(tiny_run: TrainRunSummary) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = tiny_run.run_dir / "masks" / "samples.safetensors"
    tensors = load_file(str(path))
    assert tensors["images"].shape == (16, 3, 32, 32)
    assert tensors["labels"].shape == (16, 4)
    for variant in ["normal", "emphasized"]:
        for attribute in ["shape", "colour", "size", "background"]:
            assert tensors[f"masks/{variant}/{attribute}"].shape == (16, 16, 8, 8)
    # topk with alpha=2 doubles the top channels: the emphasized masks differ from normal.
    assert (tensors["masks/emphasized/shape"] != tensors["masks/normal/shape"]).any()
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["attributes"]) == ["shape", "colour", "size", "background"]
    assert json.loads(metadata["variants"])["emphasized"] == "topk:k=4,alpha=2"


def test_adopting_a_checkpoint_keeps_the_same_model_s_sweep_and_clears_another_s(
    evaluated_run_dir: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    """Job ids name perturbations, not models: parts of another model must never be reused."""
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_run_dir, run_dir)
    config = load_config(run_dir / "config.yaml")
    adopt_checkpoint(tiny_run_dir / "checkpoints" / "normal", run_dir, config, force=False)
    assert (run_dir / "parts").is_dir() and (run_dir / "results.csv").is_file()  # same weights

    model, _ = load_checkpoint(tiny_run_dir / "checkpoints" / "normal")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(tmp_path / "other" / "normal", model, seed=0, epochs=1)
    before = _snapshot(run_dir)
    with pytest.raises(RunDirectoryError, match="already holds another trained model"):
        adopt_checkpoint(tmp_path / "other" / "normal", run_dir, config, force=False)
    assert _snapshot(run_dir) == before  # refused: nothing touched

    adopt_checkpoint(tmp_path / "other" / "normal.json", run_dir, config, force=True)
    for stale in ["parts", "results.csv", "summary.csv", "timings.csv", "failures.csv"]:
        assert not (run_dir / stale).exists(), stale
    adopted, _ = load_checkpoint(run_dir / "checkpoints" / "normal")
    assert all(a.equal(b) for a, b in zip(adopted.parameters(), model.parameters(), strict=True))


def test_run_files_are_readable_like_any_file_the_user_writes(tiny_run_dir: Path) -> None:
    """Atomic writes go through mkstemp (0600); the run's files must follow the umask instead."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    for name in ["manifest.json", "clean.csv", "checkpoints/normal.safetensors"]:
        mode = stat.S_IMODE((tiny_run_dir / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
