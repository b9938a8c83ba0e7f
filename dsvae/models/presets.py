"""Named presets: a model config plus the training defaults that go with it.

``paper`` is the faithful configuration, ``cpu`` is sized for a 2-core CPU (the C-DSVAE's
``cpu-best`` is its best 60-minute recipe there), and ``tiny`` is for tests (16x16 frames,
seconds per run). The DSVAE's ``demo`` preset is the one ``dsvae demo`` trains (32x32 frames,
about five minutes on 2 CPU cores).
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
        # `dsvae demo`: 32x32 frames, 20 epochs (5,620 steps) in 3-4 minutes on 2 CPU cores with bf16
        # autocast. recon_weight 8 (= KL weights 1/8) keeps the skin and trouser colours the judge scores;
        # the demo trains on motion-mixed sequences (dsvae.data.mixing.mix_motions) so the facing direction goes to z.
        "demo": {
            "model": {"image_size": 32, "widths": (16, 32, 64), "feature_dim": 64, "hidden_dim": 64,
                      "prior_hidden_dim": 32, "f_dim": 16, "z_dim": 8, "recon_weight": 8.0},
            "train": {"batch_size": 32, "lr": 2e-3, "epochs": 20},
        },
    },
}

# -- image-level baselines (dsvae.models.baselines, dsvae.models.aae) -----------------------
# They train on frames: a batch of B sequences is B*T = 8B images. "paper" keeps the
# DSVAE's DCGAN-64 backbone (widths 64-128-256-512) and the AAE papers' discriminators
# (two hidden layers of 1000 units, Makhzani et al.); "cpu" and "tiny" shrink them like
# the DSVAE's presets. Adversarial models get Adam with beta1 = 0.5 in their adversarial
# phases (config adv_beta1) and a smaller learning rate.
_BASE_CPU = {"widths": (16, 32, 64, 128), "feature_dim": 128}
_BASE_TINY = {**_TINY_BACKBONE, "feature_dim": 16}
_VAE_TRAIN = {
    "paper": {"batch_size": 32, "lr": 1e-3, "epochs": 100},
    "cpu": {"batch_size": 16, "lr": 1e-3, "epochs": 20},
    "tiny": {"batch_size": 8, "lr": 2e-3, "epochs": 1},
}
_AAE_TRAIN = {
    "paper": {"batch_size": 32, "lr": 2e-4, "epochs": 100},
    "cpu": {"batch_size": 16, "lr": 5e-4, "epochs": 20},
    "tiny": {"batch_size": 8, "lr": 2e-3, "epochs": 1},
}
_AAE_CPU = {**_BASE_CPU, "disc_hidden": 256}
_AAE_TINY = {**_BASE_TINY, "z_dim": 4, "disc_hidden": 32}

PRESETS.update({
    "ae": {
        "paper": {"model": {"code_dim": 128}, "train": _VAE_TRAIN["paper"]},
        "cpu": {"model": {**_BASE_CPU, "code_dim": 64}, "train": _VAE_TRAIN["cpu"]},
        "tiny": {"model": {**_BASE_TINY, "code_dim": 8}, "train": _VAE_TRAIN["tiny"]},
    },
    "vae": {
        "paper": {"model": {"latent_dim": 128}, "train": _VAE_TRAIN["paper"]},
        "cpu": {"model": {**_BASE_CPU, "latent_dim": 64}, "train": _VAE_TRAIN["cpu"]},
        "tiny": {"model": {**_BASE_TINY, "latent_dim": 8}, "train": _VAE_TRAIN["tiny"]},
    },
    "cvae": {
        "paper": {"model": {"latent_dim": 128, "classifier_hidden": 256}, "train": _VAE_TRAIN["paper"]},
        "cpu": {"model": {**_BASE_CPU, "latent_dim": 64, "classifier_hidden": 128}, "train": _VAE_TRAIN["cpu"]},
        "tiny": {"model": {**_BASE_TINY, "latent_dim": 8, "classifier_hidden": 16}, "train": _VAE_TRAIN["tiny"]},
    },
    "aae": {
        "paper": {"model": {"z_dim": 32}, "train": _AAE_TRAIN["paper"]},
        "cpu": {"model": {**_AAE_CPU, "z_dim": 16}, "train": _AAE_TRAIN["cpu"]},
        "tiny": {"model": _AAE_TINY, "train": _AAE_TRAIN["tiny"]},
        # a 2-D latent for latent-plane grids (`dsvae baseline-outputs --grid`): N(0, 5^2) as in the paper,
        # or 10 Gaussians on a circle
        "latent2d": {"model": {**_AAE_CPU, "z_dim": 2, "prior_std": 5.0}, "train": _AAE_TRAIN["cpu"]},
        "mixture2d": {"model": {**_AAE_CPU, "z_dim": 2, "prior": "mixture", "mixture_components": 10,
                                "mixture_radius": 4.0, "mixture_std": 0.5}, "train": _AAE_TRAIN["cpu"]},
    },
    "aae-sup": {
        "paper": {"model": {"z_dim": 16}, "train": _AAE_TRAIN["paper"]},
        "cpu": {"model": {**_AAE_CPU, "z_dim": 8}, "train": _AAE_TRAIN["cpu"]},
        "tiny": {"model": _AAE_TINY, "train": _AAE_TRAIN["tiny"]},
    },
    "aae-semi": {
        "paper": {"model": {"z_dim": 16}, "train": _AAE_TRAIN["paper"]},
        "cpu": {"model": {**_AAE_CPU, "z_dim": 8}, "train": _AAE_TRAIN["cpu"]},
        "tiny": {"model": _AAE_TINY, "train": _AAE_TRAIN["tiny"]},
    },
})


# -- the improved DSVAE (dsvae.models.cdsvae) ----------------------------------------------
# The DSVAE's backbones (same widths and LSTM sizes per preset) plus the self-supervised
# ingredients at their config defaults; a smaller z than the DSVAE's. Switch an ingredient
# off with its weight (e.g. `dsvae train --set mi_weight=0`) to attribute its gain.
PRESETS["cdsvae"] = {
    "paper": {"model": {"z_dim": 32}, "train": {"batch_size": 128, "lr": 1e-3, "epochs": 100}},
    "cpu": {
        "model": {**PRESETS["dsvae"]["cpu"]["model"], "z_dim": 8},
        "train": {"batch_size": 32, "lr": 1e-3, "epochs": 20},
    },
    "tiny": {
        "model": {**PRESETS["dsvae"]["tiny"]["model"], "temperature": 0.5},
        "train": {"batch_size": 8, "lr": 2e-3, "epochs": 1},
    },
}
# The best 60-minute recipe on the 2-core CPU (BENCHMARKS.md section 7): the `cpu` preset with doubled
# conv widths, a 32-component mixture prior for the dynamics, twice the learning rate (2e-3) with a cosine
# decay over the budget of 60 wall-clock minutes (the epoch count is only a cap) and a moving average of the weights
# (what `dsvae.load` and `dsvae eval` use; `--weights raw` judges the trained ones) whose batch-norm
# statistics are recomputed over 200 training batches at the end (`--bn-recalibrate`); train it on
# motion-mixed data (`dsvae data mix`).
PRESETS["cdsvae"]["cpu-best"] = {
    "model": {**PRESETS["cdsvae"]["cpu"]["model"], "widths": (32, 64, 128, 256), "prior_components": 32},
    "train": {**PRESETS["cdsvae"]["cpu"]["train"], "lr": 2e-3, "lr_schedule": "cosine", "max_minutes": 60,
              "epochs": 1000, "ema_decay": 0.998, "bn_recalibrate": 200},
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
