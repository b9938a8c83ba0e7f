"""Smoke test of scripts/hour_recipe.sh (issue 7's CPU hour, end to end) at tiny scale: each stage runs,
into its own folder, and the results and targets table come out."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hour_recipe.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)


def test_the_hour_recipe_trains_polishes_fits_the_prior_and_judges(procedural_h5, tiny_judge, tmp_path):
    out = tmp_path / "hour"
    mixed = tmp_path / "mixed.h5"
    done = _run(tmp_path, "--preset", "tiny", "--max-steps", "3", OUT=str(out), SEED="7", DATA=str(procedural_h5),
                MIXED=str(mixed), JUDGE=str(tiny_judge.path), POLISH_STEPS="2", POLISH_LR="1e-3", EVAL_LIMIT="18",
                REPEATS="1", AMP="off")
    assert done.returncode == 0, done.stderr[-3000:]
    assert mixed.is_file()  # the motion-mixed copy was made, the data set and judge were there already
    times = (out / "times.txt").read_text()
    stages = [line.split()[0] for line in times.splitlines()[4:]]
    assert stages == ["mix", "train", "polish", "prior", "eval"]
    assert "seed 7;" in times and "at lr 1e-3;" in times and "--max-steps 3" in times

    def saved(folder: str) -> dict:
        return torch.load(out / folder / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)

    train, polished, final = saved("train"), saved("polished"), saved("final")
    assert train["step"] == 3 and train["model_config"]["pair_share"] == 0  # the recipe's training, unpolished
    assert train["model_config"]["motion_flip"] == 0 and train["model_config"]["view_grad"] is False
    assert "polished" not in train
    record = polished["polished"]
    assert record["steps"] == 2 and record["batch_size"] == 16 and record["pair_share"] == 1
    assert record["lr"] == pytest.approx(1e-3)  # POLISH_LR (default 2e-3) reached the polish
    assert record["input_layers_kept"] is False and record["pair_neighbours"] == 8
    assert final["model_config"]["static_prior_components"] == 64
    results = json.loads((out / "RESULTS.json").read_text())
    assert results["n_videos"] == 18 and results["dynamic"]["status"] == "ok"
    table = (out / "TARGETS.md").read_text()
    assert "| seed 7 |" in table and "targets met" in table


def test_an_existing_output_folder_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "hour"
    out.mkdir()
    done = _run(tmp_path, OUT=str(out), DATA=str(tmp_path / "none.h5"))
    assert done.returncode == 2 and "exists" in done.stderr
    assert list(out.iterdir()) == [] and not (tmp_path / "data").exists()
