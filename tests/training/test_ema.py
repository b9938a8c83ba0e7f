import pytest
import torch
from torch import nn

import dsvae
from dsvae.cli import main
from dsvae.errors import DsvaeError
from dsvae.training import trainer as trainer_mod
from dsvae.training.checkpoint import load_checkpoint, model_weights
from dsvae.training.ema import WeightAverage
from dsvae.training.trainer import train

FAST = dict(preset="tiny", limit=64, batch_size=8, sample_every=0, progress=False, log_every=5)


def test_average_follows_the_weights_with_a_warm_up():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(net, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): mostly the new weights at first
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(2.0)
        net[1].num_batches_tracked.fill_(7)
    ema.update()
    w = start["0.weight"] + 0.9 * 1.0  # a share 1 - 0.1 of the way to the new value
    assert torch.allclose(ema.state["0.weight"], w)
    assert torch.allclose(ema.state["1.running_mean"], torch.full((2,), 1.8))
    assert int(ema.state["1.num_batches_tracked"]) == 7  # integer buffers are copied, not averaged
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == 0.9
    assert torch.allclose(ema.state["0.weight"], net[0].weight, atol=1e-6)  # converges on constant weights
    # the average is a copy: the model's weights did not move
    assert torch.equal(net[0].weight, start["0.weight"] + 1.0)

    saved = ema.state_dict()
    other = WeightAverage(net, decay=0.9)
    other.load_state_dict(saved)
    assert other.updates == ema.updates and torch.equal(other.state["0.weight"], ema.state["0.weight"])
    with pytest.raises(DsvaeError, match="does not match"):
        WeightAverage(nn.Linear(3, 2), decay=0.9).load_state_dict(saved)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(DsvaeError, match="decay"):
            WeightAverage(net, decay=bad)


def test_trainer_keeps_the_average_and_loaders_pick_it(tmp_path, procedural_h5):
    res = train(data=str(procedural_h5), out=str(tmp_path / "ema"), max_steps=12, ema_decay=0.8, lr=3e-3, **FAST)
    ckpt = load_checkpoint(res.run_dir)
    assert ckpt["ema"]["updates"] == 12 and ckpt["ema"]["decay"] == 0.8
    raw, used_raw = model_weights(ckpt, "raw")
    avg, used_auto = model_weights(ckpt, "auto")
    assert (used_raw, used_auto) == ("raw", "ema") and raw.keys() == avg.keys()
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())
    for k, v in res.model.state_dict().items():
        assert torch.equal(raw[k], v.cpu()), k
    for k, v in dsvae.load(res.run_dir).state_dict().items():
        assert torch.equal(v, avg[k]), k
    for k, v in dsvae.load(res.run_dir, weights="raw").state_dict().items():
        assert torch.equal(v, raw[k]), k

    plain = train(data=str(procedural_h5), out=str(tmp_path / "plain"), max_steps=2, **FAST)
    assert "ema" not in load_checkpoint(plain.run_dir)
    assert model_weights(load_checkpoint(plain.run_dir), "auto")[1] == "raw"
    with pytest.raises(DsvaeError, match="no weight average"):
        dsvae.load(plain.run_dir, weights="ema")
    with pytest.raises(DsvaeError, match="unknown weights"):
        dsvae.load(plain.run_dir, weights="best")


def test_average_survives_a_resume(tmp_path, procedural_h5):
    full = train(data=str(procedural_h5), out=str(tmp_path / "full"), max_steps=10, ema_decay=0.9, **FAST)
    half = train(data=str(procedural_h5), out=str(tmp_path / "half"), max_steps=5, ema_decay=0.9, **FAST)
    resumed = train(data=str(procedural_h5), out=str(half.run_dir), max_steps=10, resume=True, progress=False)
    assert resumed.step == 10
    a, b = load_checkpoint(full.run_dir)["ema"], load_checkpoint(half.run_dir)["ema"]
    assert a["updates"] == b["updates"] == 10
    for k in a["weights"]:
        assert torch.allclose(a["weights"][k].float(), b["weights"][k].float(), atol=1e-6), k


def test_ema_options_and_errors(tmp_path, procedural_h5, capsys):
    assert trainer_mod._resolve_config(trainer_mod.TrainConfig(model="cdsvae", preset="cpu"))[0].ema_decay == 0.0
    with pytest.raises(DsvaeError, match="ema_decay must be in"):
        train(data=str(procedural_h5), out=str(tmp_path / "bad"), max_steps=1, ema_decay=1.0, **FAST)
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "cli"
    rc = main(["train", "--data", str(procedural_h5), "--out", str(out), "--preset", "tiny", "--max-steps", "3",
               "--limit", "64", "--batch-size", "8", "--sample-every", "0", "--quiet", "--ema-decay", "0.99"])
    assert rc == 0 and load_checkpoint(out)["ema"]["updates"] == 3
    rc = main(["train", "--data", str(procedural_h5), "--out", str(out), "--preset", "tiny", "--max-steps", "6",
               "--resume", "--quiet"])
    assert rc == 0 and load_checkpoint(out)["ema"]["updates"] == 6
    # a run trained without an average gets one from where it is resumed with --ema-decay
    plain = train(data=str(procedural_h5), out=str(tmp_path / "plain"), max_steps=2, **FAST)
    rc = main(["train", "--data", str(procedural_h5), "--out", str(plain.run_dir), "--max-steps", "4", "--resume",
               "--ema-decay", "0.9", "--quiet"])
    ckpt = load_checkpoint(plain.run_dir)
    assert rc == 0 and ckpt["ema"]["updates"] == 2 and ckpt["train_config"]["ema_decay"] == 0.9


def test_eval_judges_the_weights_asked_for(tmp_path, procedural_h5, tiny_judge, capsys):
    from dsvae.evaluation.protocol import evaluate

    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, ema_decay=0.5, **FAST).run_dir
    kw = dict(repeats=1, limit=30, progress=False)
    assert evaluate(run, tiny_judge.path, procedural_h5, **kw)["model"]["weights"] == "ema"
    assert evaluate(run, tiny_judge.path, procedural_h5, weights="raw", **kw)["model"]["weights"] == "raw"
    out = tmp_path / "RESULTS.json"
    rc = main(["eval", "--run", str(run), "--judge", str(tiny_judge.path), "--data", str(procedural_h5), "--out",
               str(out), "--repeats", "1", "--limit", "30", "--quiet", "--weights", "raw"])
    assert rc == 0 and '"weights": "raw"' in out.read_text()
    plain = train(data=str(procedural_h5), out=str(tmp_path / "plain"), max_steps=2, **FAST).run_dir
    capsys.readouterr()
    rc = main(["eval", "--run", str(plain), "--judge", str(tiny_judge.path), "--data", str(procedural_h5),
               "--repeats", "1", "--limit", "30", "--quiet", "--weights", "ema"])
    err = capsys.readouterr().err
    assert rc == 2 and "no weight average" in err and err.count("\n") == 1
