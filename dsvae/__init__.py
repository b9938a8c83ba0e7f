"""dsvae: sequential disentanglement of video sprites.

Public API::

    import dsvae
    model = dsvae.load("runs/my_run")          # a run folder or a checkpoint file
    post = model.encode(x)                     # x: float (B, T, 3, H, W) in [0, 1]
    x_swap = model.decode(post.f_mean.flip(0), post.z_mean)
"""

__version__ = "0.1.0"


def load(path, device="cpu", weights="auto"):
    """Rebuild a trained model from a run folder or a checkpoint file (see :mod:`dsvae.training.checkpoint`).

    ``weights``: "auto" (the run's weight average when it kept one, else the trained weights), "ema" or "raw".
    """
    from dsvae.training.checkpoint import load_model

    return load_model(path, device=device, weights=weights)


__all__ = ["__version__", "load"]
