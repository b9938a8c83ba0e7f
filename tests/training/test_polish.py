import pytest
import torch

import dsvae
from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.data.mixing import dataset_colour_neighbours
from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.base import reconstruction_loss
from dsvae.training.checkpoint import load_checkpoint, model_weights
from dsvae.training.polish import polish_decoder, polish_run, posterior_means, prior_consistency, swap_consistency
from dsvae.training.trainer import train

FAST = dict(preset="tiny", limit=64, batch_size=8, sample_every=0, progress=False, log_every=5)


@pytest.fixture
def tiny_data(procedural_h5):
    ds = SpritesDataset(procedural_h5, "train", image_size=16, limit=64)
    yield ds
    ds.close()


def _mean_decode_error(model, ds):
    f, z = posterior_means(model, ds)
    with torch.no_grad():
        return float(reconstruction_loss(model.decode(f, z), ds.batch(torch.arange(len(ds)))["x"], "mse").mean())


def test_polish_lowers_the_mean_decode_error_and_touches_only_the_decoder(tiny_data):
    torch.manual_seed(0)
    model = build_model("cdsvae", {"image_size": 16, "widths": (8, 16), "feature_dim": 16, "hidden_dim": 16,
                                   "prior_hidden_dim": 16, "f_dim": 8, "z_dim": 4}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    error_before = _mean_decode_error(model, tiny_data)
    result = polish_decoder(model, tiny_data, steps=40, lr=3e-3, batch_size=16, bn_batches=4)
    assert result.steps == 40 and result.bn_batches == 4 and result.loss_end < result.loss_start
    assert _mean_decode_error(model, tiny_data) < 0.8 * error_before
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert "decoder.net.0.weight" not in changed  # the layer that reads the codes stays as trained
    assert any("running_mean" in k for k in changed)  # the decoder's batch-norm statistics were recomputed
    assert not model.training and all(p.requires_grad for p in model.parameters())  # nothing left frozen
    polish_decoder(model, tiny_data, steps=2, bn_batches=0, keep_input_layers=False)
    assert not torch.equal(model.state_dict()["decoder.net.0.weight"], before["decoder.net.0.weight"])


TINY_CDSVAE = {"image_size": 16, "widths": (8, 16), "feature_dim": 16, "hidden_dim": 16, "prior_hidden_dim": 16,
               "f_dim": 8, "z_dim": 4}


def _swap_term(model, ds):
    f, z, f_logvar, z_logvar = posterior_means(model, ds, with_logvar=True)
    model.eval()
    with torch.no_grad():
        return float(swap_consistency(model, f, z, f_logvar, z_logvar).mean())


def _prior_term(model, ds, seed=5):
    _, z, _, z_logvar = posterior_means(model, ds, with_logvar=True)
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return float(prior_consistency(model, z, z_logvar).mean())


def test_the_swap_term_scores_the_mixed_decode_against_the_codes_it_came_from(tiny_data):
    torch.manual_seed(0)
    model = build_model("cdsvae", TINY_CDSVAE).eval()
    f, z, f_logvar, z_logvar = posterior_means(model, tiny_data, with_logvar=True)
    f, z, f_logvar, z_logvar = f[:6], z[:6], f_logvar[:6], z_logvar[:6]
    with torch.no_grad():
        term = swap_consistency(model, f, z, f_logvar, z_logvar)
        assert term.shape == (6,) and bool((term >= 0).all()) and float(term.sum()) > 0
        # the decode of f_i with z_(i-1): scored against f_i and z_(i-1), each with its own variance
        post = model.encode(model.decode(f, z.roll(1, 0)))
        want = ((post.f_mean - f) ** 2 / (2 * f_logvar.exp())).sum(-1)
        want = want + ((post.z_mean - z.roll(1, 0)) ** 2 / (2 * z_logvar.roll(1, 0).exp())).sum((1, 2))
        torch.testing.assert_close(term, want)
        # scored against its own z instead (no roll), the term is a different number
        own = ((post.z_mean - z) ** 2 / (2 * z_logvar.exp())).sum((1, 2))
        assert not torch.allclose(want, ((post.f_mean - f) ** 2 / (2 * f_logvar.exp())).sum(-1) + own)


@pytest.mark.parametrize("name,measure,bn_batches", [
    ("swap", _swap_term, 4),
    # no batch-norm recalibration after the prior polish: it runs plain reconstructions, whose statistics blur the
    # comparison of decodes with the prior's looks
    ("prior", _prior_term, 0),
])
def test_a_consistency_weight_lowers_its_term_more_than_the_plain_polish(tiny_data, name, measure, bn_batches):
    # an untrained encoder's posterior variances are ~1 and its reading barely moves with the decode, so the
    # term is ~1e-6 of the reconstruction here: the weight makes up for it
    terms, after = {}, {}
    for weight in (0.0, 3e5):
        torch.manual_seed(0)
        model = build_model("cdsvae", TINY_CDSVAE).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        start = measure(model, tiny_data)
        result = polish_decoder(model, tiny_data, steps=40, lr=3e-3, batch_size=16, bn_batches=bn_batches,
                                **{f"{name}_weight": weight})
        after[weight] = torch.random.get_rng_state()
        terms[weight] = measure(model, tiny_data)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and all(k.startswith("decoder.") for k in changed)  # the encoder critic stays frozen
        assert result.loss_end < result.loss_start and getattr(result, f"{name}_weight") == weight
        first, last = getattr(result, f"{name}_start"), getattr(result, f"{name}_end")
        if weight:
            assert last < first and terms[weight] < start
        else:
            assert first is None and last is None
    assert terms[3e5] < 0.8 * terms[0.0]
    assert torch.equal(after[0.0], after[3e5])  # the prior's draws leave the caller's generator where it was


def test_the_swap_weight_is_checked(tiny_data):
    model = build_model("cdsvae", TINY_CDSVAE)
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(DsvaeError, match="swap-consistency weight"):
            polish_decoder(model, tiny_data, steps=1, swap_weight=bad)
        with pytest.raises(DsvaeError, match="prior-consistency weight"):
            polish_decoder(model, tiny_data, steps=1, prior_weight=bad)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_the_pair_share_decodes_that_share_from_a_colour_neighbours_static_code(tiny_data, monkeypatch, share):
    torch.manual_seed(0)
    model = build_model("cdsvae", TINY_CDSVAE).eval()
    f_all, z_all = posterior_means(model, tiny_data)
    partners = dataset_colour_neighbours(tiny_data, 2)
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda f, z: seen.append((f.detach(), z.detach())) or decode(f, z))
    result = polish_decoder(model, tiny_data, steps=12, lr=3e-3, batch_size=16, bn_batches=0, pair_share=share,
                            neighbours=2)
    from_partner = []
    for f, z in seen:  # each decode's dynamics name its sequence i; its static code is i's or a neighbour's
        i = (z_all[None] == z[:, None]).flatten(2).all(-1).float().argmax(1)
        own = (f == f_all[i]).all(1)
        near = torch.stack([(f == f_all[partners[i, k]]).all(1) for k in range(2)]).any(0)
        assert bool((own | near).all())
        from_partner.append(near & ~own)
    share_seen = float(torch.cat(from_partner).float().mean())
    assert len(seen) == 12 and abs(share_seen - share) < 0.15
    if share:
        assert result.pair_share == share and result.pair_neighbours == 2 and 0.5 < result.pair_precision <= 1.0
    else:
        assert result.pair_neighbours is None and result.pair_precision is None


def test_the_pair_share_is_checked(tiny_data):
    model = build_model("cdsvae", TINY_CDSVAE)
    for bad in (-0.1, 1.5, float("nan"), "1"):
        with pytest.raises(DsvaeError, match="pair share"):
            polish_decoder(model, tiny_data, steps=1, pair_share=bad)
    for bad in (0, True, 1.5):
        with pytest.raises(DsvaeError, match="neighbours"):
            polish_decoder(model, tiny_data, steps=1, pair_share=0.5, neighbours=bad)


def test_the_prior_term_scores_a_decode_with_a_prior_look_against_the_dynamics_it_came_from(tiny_data):
    torch.manual_seed(0)
    model = build_model("cdsvae", TINY_CDSVAE).eval()
    _, z, _, z_logvar = posterior_means(model, tiny_data, with_logvar=True)
    z, z_logvar = z[:6], z_logvar[:6]
    with torch.no_grad():
        torch.manual_seed(1)
        term = prior_consistency(model, z, z_logvar)
        assert term.shape == (6,) and bool((term >= 0).all()) and float(term.sum()) > 0
        torch.manual_seed(1)  # the same draws of f from the static prior, as the dynamic test draws them
        f = model.sample_static(6)
        post = model.encode(model.decode(f, z))
        torch.testing.assert_close(term, ((post.z_mean - z) ** 2 / (2 * z_logvar.exp())).sum((1, 2)))
        torch.manual_seed(2)  # other draws, another look: another number
        assert not torch.allclose(prior_consistency(model, z, z_logvar), term)


def test_the_input_layers_include_the_film_maps():
    from dsvae.models.blocks import FrameDecoder

    plain = FrameDecoder((8, 16), 12)
    film = FrameDecoder((8, 16), 12, cond_dim=8, film_blocks=1)
    assert plain.input_layers() == [plain.net[0]]
    assert film.input_layers() == [film.net[0], film.film]


def test_polish_stops_at_its_time_budget(tiny_data, monkeypatch):
    from dsvae.training import polish as polish_mod

    clock = iter(range(0, 10_000, 30))  # every call to time.time() is 30 s later
    monkeypatch.setattr(polish_mod.time, "time", lambda: float(next(clock)))
    model = build_model("dsvae", {"image_size": 16, "widths": (8, 16), "feature_dim": 16, "hidden_dim": 16,
                                  "prior_hidden_dim": 16, "f_dim": 8, "z_dim": 4})
    result = polish_decoder(model, tiny_data, minutes=2, bn_batches=0)
    assert 1 <= result.steps <= 4 and result.bn_batches == 0


def test_polish_refuses_bad_budgets_and_models_without_a_decoder(tiny_data):
    model = build_model("dsvae", {"image_size": 16, "widths": (8, 16), "f_dim": 8, "z_dim": 4, "feature_dim": 16,
                                  "hidden_dim": 16, "prior_hidden_dim": 16})
    for kwargs in ({}, {"minutes": 0}, {"steps": 0}, {"steps": 2, "lr": 0}):
        with pytest.raises(DsvaeError):
            polish_decoder(model, tiny_data, **kwargs)
    del model.decoder
    with pytest.raises(DsvaeError, match="no decoder"):
        polish_decoder(model, tiny_data, steps=1)


def test_polish_run_writes_the_weight_average_back_once(tmp_path, procedural_h5):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=8, ema_decay=0.9, **FAST).run_dir
    before = load_checkpoint(run)
    done = polish_run(run, procedural_h5, steps=5, bn_batches=2, progress=False)
    assert done["weights"] == "ema" and done["steps"] == 5 and done["checkpoint"].endswith("last.pt")
    after = load_checkpoint(run)
    assert after["polished"]["steps"] == 5 and after["polished"]["weights"] == "ema"
    changed = {k for k, v in after["ema"]["weights"].items() if not torch.equal(v, before["ema"]["weights"][k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert all(torch.equal(v, before["model"][k]) for k, v in after["model"].items())  # trained weights untouched
    assert after["step"] == before["step"] and after["optimizers"].keys() == before["optimizers"].keys()
    # the periodic checkpoint of the same step keeps the unpolished weights
    periodic = load_checkpoint(run / "checkpoints" / "step_0000008.pt")
    assert "polished" not in periodic
    assert all(torch.equal(v, before["ema"]["weights"][k]) for k, v in periodic["ema"]["weights"].items())
    loaded = dsvae.load(run)
    assert all(torch.equal(v, after["ema"]["weights"][k]) for k, v in loaded.state_dict().items())
    with pytest.raises(DsvaeError, match="already polished"):
        polish_run(run, procedural_h5, steps=5, progress=False)


def test_polish_run_without_a_weight_average_polishes_the_trained_weights(tmp_path, procedural_h5):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, **FAST).run_dir
    before = load_checkpoint(run)
    assert polish_run(run, procedural_h5, steps=3, bn_batches=1, progress=False)["weights"] == "raw"
    after = load_checkpoint(run)
    changed = {k for k, v in after["model"].items() if not torch.equal(v, before["model"][k])}
    assert "ema" not in after and changed and all(k.startswith("decoder.") for k in changed)


def test_polish_run_keeps_a_periodic_checkpoint_and_writes_its_polish_elsewhere(tmp_path, procedural_h5):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=8, ema_decay=0.9, **FAST).run_dir
    step = run / "checkpoints" / "step_0000008.pt"
    before = step.read_bytes()
    with pytest.raises(DsvaeError, match="periodic checkpoint"):
        polish_run(step, procedural_h5, steps=2, progress=False)
    assert step.read_bytes() == before
    # to a new run folder: its last.pt, with the source run's config.json; the source stays as it was
    done = polish_run(step, procedural_h5, steps=3, bn_batches=1, out=tmp_path / "polished", progress=False)
    copy = tmp_path / "polished"
    assert done["checkpoint"] == str(copy / "checkpoints" / "last.pt") and done["steps"] == 3
    assert (copy / "config.json").read_text() == (run / "config.json").read_text()
    assert step.read_bytes() == before and "polished" not in load_checkpoint(run)
    polished = load_checkpoint(copy)
    assert polished["polished"]["steps"] == 3 and polished["step"] == 8
    assert _changed(load_checkpoint(step)["ema"]["weights"], polished["ema"]["weights"]) == {"decoder"}
    loaded = dsvae.load(copy)
    assert all(torch.equal(v, polished["ema"]["weights"][k]) for k, v in loaded.state_dict().items())
    # to a checkpoint file; an existing target is refused before any work
    file = tmp_path / "alone.pt"
    polish_run(run, procedural_h5, steps=2, bn_batches=0, out=file, progress=False)
    assert load_checkpoint(file)["polished"]["steps"] == 2 and "polished" not in load_checkpoint(run)
    for target in (copy, file, run):
        with pytest.raises(DsvaeError, match="already"):
            polish_run(step, procedural_h5, steps=2, out=target, progress=False)
    assert (copy / "checkpoints" / "last.pt").is_file() and load_checkpoint(file)["polished"]["steps"] == 2


def test_trainer_polishes_at_the_end_and_not_again_on_resume(tmp_path, procedural_h5):
    kw = dict(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=6, ema_decay=0.9, bn_recalibrate=2, **FAST)
    result = train(polish_minutes=0.01, **kw)
    assert result.polished is not None and result.polished["weights"] == "ema" and result.polished["steps"] >= 1
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt["polished"]["steps"] == result.polished["steps"] and ckpt["bn_recalibrated"]["batches"] == 2
    periodic = load_checkpoint(result.run_dir / "checkpoints" / "step_0000006.pt")  # recalibrated, not polished
    assert "polished" not in periodic and periodic["bn_recalibrated"]["batches"] == 2
    assert _changed(periodic["ema"]["weights"], ckpt["ema"]["weights"]) == {"decoder"}
    # the returned model is the trained one; the polished weight average is what dsvae.load gives
    loaded = dsvae.load(result.run_dir)
    assert all(torch.equal(v, ckpt["ema"]["weights"][k]) for k, v in loaded.state_dict().items())
    # resumed without new steps: neither recalibrated nor polished again, the weights stay
    again = train(resume=True, polish_minutes=0.01, **{**kw, "max_steps": 6})
    assert again.polished is None and again.bn_recalibrated == 0
    kept = model_weights(load_checkpoint(again.run_dir))[0]
    assert all(torch.equal(v, ckpt["ema"]["weights"][k]) for k, v in kept.items())
    with pytest.raises(DsvaeError, match="polish_minutes"):
        train(polish_minutes=-1, **{**kw, "out": str(tmp_path / "bad")})


def test_cli_polish(tmp_path, procedural_h5, capsys):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, ema_decay=0.9, **FAST).run_dir
    assert main(["polish", "--run", str(run), "--data", str(procedural_h5), "--steps", "3", "--bn-batches", "1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "polished the decoder of the weight average: 3 steps" in out
    assert load_checkpoint(run)["polished"]["steps"] == 3
    assert main(["polish", "--run", str(run), "--data", str(procedural_h5), "--steps", "3", "--quiet"]) == 2
    assert "already polished" in capsys.readouterr().err
    step = str(run / "checkpoints" / "step_0000004.pt")
    assert main(["polish", "--run", step, "--data", str(procedural_h5), "--steps", "2", "--quiet"]) == 2
    assert "periodic checkpoint" in capsys.readouterr().err and "polished" not in load_checkpoint(step)
    assert main(["polish", "--run", step, "--data", str(procedural_h5), "--steps", "2", "--bn-batches", "0",
                 "--out", str(tmp_path / "copy"), "--quiet"]) == 0
    assert f"written to {tmp_path / 'copy' / 'checkpoints' / 'last.pt'}" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "copy")["polished"]["steps"] == 2 and "polished" not in load_checkpoint(step)
    other = train(data=str(procedural_h5), out=str(tmp_path / "other"), max_steps=4, **FAST).run_dir
    assert main(["polish", "--run", str(other), "--data", str(procedural_h5), "--steps", "2", "--bn-batches", "0",
                 "--swap-weight", "0.5", "--quiet"]) == 0
    assert "swap consistency" in capsys.readouterr().out and load_checkpoint(other)["polished"]["swap_weight"] == 0.5
    third = train(data=str(procedural_h5), out=str(tmp_path / "third"), max_steps=2, **FAST).run_dir
    assert main(["polish", "--run", str(third), "--data", str(procedural_h5), "--steps", "2", "--swap-weight", "-1",
                 "--quiet"]) == 2
    assert "swap-consistency weight" in capsys.readouterr().err and "polished" not in load_checkpoint(third)
    assert main(["polish", "--run", str(third), "--data", str(procedural_h5), "--steps", "2", "--prior-weight", "0.5",
                 "--quiet"]) == 0
    assert "prior consistency" in capsys.readouterr().out and load_checkpoint(third)["polished"]["prior_weight"] == 0.5
    assert main(["polish", "--run", str(step), "--data", str(procedural_h5), "--steps", "2", "--bn-batches", "0",
                 "--pair-share", "1.5", "--out", str(tmp_path / "paired"), "--quiet"]) == 2
    assert "pair share" in capsys.readouterr().err and not (tmp_path / "paired").exists()
    assert main(["polish", "--run", str(step), "--data", str(procedural_h5), "--steps", "2", "--bn-batches", "0",
                 "--pair-share", "0.5", "--neighbours", "2", "--out", str(tmp_path / "paired"), "--quiet"]) == 0
    assert "50% of the decodes from a colour neighbour's f" in capsys.readouterr().out
    record = load_checkpoint(tmp_path / "paired")["polished"]
    assert record["pair_share"] == 0.5 and record["pair_neighbours"] == 2 and 0.5 < record["pair_precision"] <= 1
    assert main(["polish", "--run", str(tmp_path / "missing"), "--data", str(procedural_h5), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _changed(before, after):
    """The top-level modules with a tensor that differs between two state dicts."""
    return {k.split(".")[0] for k, v in after.items() if not torch.equal(v, before[k])}


def test_cli_train_with_a_polish(tmp_path, procedural_h5, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "cdsvae", "--preset", "tiny", "--data", str(procedural_h5), "--out", str(out),
                 "--max-steps", "3", "--limit", "32", "--batch-size", "8", "--sample-every", "0", "--ema-decay", "0.9",
                 "--polish-minutes", "0.005", "--quiet"]) == 0
    assert "; decoder polished for" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt["polished"]["weights"] == "ema" and ckpt["train_config"]["polish_minutes"] == 0.005


def test_eval_records_the_polish_of_the_judged_weights(tmp_path, procedural_h5, tiny_judge):
    from dsvae.evaluation.protocol import evaluate

    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, ema_decay=0.9, **FAST).run_dir
    polish_run(run, procedural_h5, steps=2, bn_batches=1, progress=False)
    average = evaluate(run, tiny_judge.path, procedural_h5, repeats=1, limit=20, progress=False)
    assert average["model"]["weights"] == "ema" and average["model"]["polished"]["steps"] == 2
    trained = evaluate(run, tiny_judge.path, procedural_h5, repeats=1, limit=20, weights="raw", progress=False)
    assert trained["model"]["weights"] == "raw" and "polished" not in trained["model"]
