"""Named presets: a model config plus the training defaults that go with it.

``paper`` is the faithful configuration, ``cpu`` is sized for a 2-core CPU, and
``tiny`` is for tests (16x16 frames, seconds per run).
"""

from __future__ import annotations

from typing import Any

from dsvae.errors import DsvaeError

_TINY_BACKBONE = {"image_size": 16, "widths": (8, 16)}

PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "dsvae": {
        # Li & Mandt: f = 256, z = 32, LSTM hidden 256, DCGAN-64 widths 64-128-256-512, all loss weights 1.
        "paper": {"model": {}, "train": {"batch_size": 128, "lr": 1e-3, "epochs": 100}},
        "cpu": {
            "model": {"widths": (16, 32, 64, 128), "feature_dim": 128, "hidden_dim": 128,
                      "prior_hidden_dim": 128, "f_dim": 64, "z_dim": 16},
            "train": {"batch_size": 32, "lr": 1e-3, "epochs": 20},
        },
        "tiny": {
            "model": {**_TINY_BACKBONE, "feature_dim": 16, "hidden_dim": 16, "prior_hidden_dim": 16,
                      "f_dim": 8, "z_dim": 4},
            "train": {"batch_size": 8, "lr": 2e-3, "epochs": 1},
        },
    },
}


def preset_names(model: str) -> list[str]:
    return sorted(PRESETS.get(model, {}))


def get_preset(model: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config overrides, training defaults) of preset ``name`` of ``model``."""
    presets = PRESETS.get(model, {})
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise DsvaeError(f"unknown preset {name!r} for model {model!r} (known: {known})")
    entry = presets[name]
    return dict(entry.get("model", {})), dict(entry.get("train", {}))
