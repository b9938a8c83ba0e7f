"""Shared fixtures. Tests needing the raw LPC layers skip with a reason when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LPC_DIR = Path(os.environ.get("DSVAE_LPC_DIR", REPO.parent / "shared" / "sprites-lpc"))


def pytest_configure(config):
    # Tiny models: one thread is fastest and keeps a loaded 2-core machine responsive.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lpc_dir() -> Path:
    if not (LPC_DIR / "body" / "0.png").exists():
        pytest.skip(f"raw LPC layers not found at {LPC_DIR} (set DSVAE_LPC_DIR or put them in ../shared/sprites-lpc)")
    return LPC_DIR


@pytest.fixture(scope="session")
def procedural_h5(tmp_path_factory) -> Path:
    """The full procedural data set (the embedded default), built once per test session."""
    from dsvae.data.procedural import build_procedural

    path = tmp_path_factory.mktemp("procedural") / "procedural.h5"
    build_procedural(path, seed=0, progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_judge(procedural_h5, tmp_path_factory):
    """(JudgeResult) of a 16x16 judge trained once per session on the whole procedural train split:
    seconds on 2 CPU cores, accurate on the procedural test split."""
    from dsvae.evaluation.judge import judge_config, train_judge

    out = tmp_path_factory.mktemp("judge") / "judge.pt"
    return train_judge(procedural_h5, out, config=judge_config("tiny", widths=(16, 32)), epochs=8, batch_size=64,
                       lr=2e-3, seed=0, progress=False)
