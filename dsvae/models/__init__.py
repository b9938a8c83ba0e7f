"""Model registry: every trainable model by name, and their presets."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Mapping

from dsvae.errors import DsvaeError
from dsvae.models.base import ModelConfig, Posterior, SequenceModel

#: name -> "module:Class"; imported on first use.
MODELS: dict[str, str] = {
    "dsvae": "dsvae.models.dsvae:DSVAE",
    "cdsvae": "dsvae.models.cdsvae:CDSVAE",
    "ae": "dsvae.models.baselines:AE",
    "vae": "dsvae.models.baselines:VAE",
    "cvae": "dsvae.models.baselines:ClassifierVAE",
    "aae": "dsvae.models.aae:AAE",
    "aae-sup": "dsvae.models.aae:SupervisedAAE",
    "aae-semi": "dsvae.models.aae:SemiSupervisedAAE",
}


def model_class(name: str) -> type[SequenceModel]:
    if name not in MODELS:
        raise DsvaeError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
    try:
        return getattr(import_module(module), cls)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise DsvaeError(f"model {name!r} is not available in this build ({exc})") from exc


def build_model(name: str, config: Mapping[str, Any] | None = None) -> SequenceModel:
    return model_class(name)(dict(config or {}))


__all__ = ["MODELS", "ModelConfig", "Posterior", "SequenceModel", "build_model", "model_class"]
