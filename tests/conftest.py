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
