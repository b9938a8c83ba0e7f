import pytest
import torch
from torch import nn

from dsvae.cli import main
from dsvae.errors import DsvaeError
from dsvae.training import trainer as trainer_mod
from dsvae.training.batchnorm import batchnorm_layers, recalibrate_batchnorm, recalibrate_state
from dsvae.training.checkpoint import load_checkpoint, model_weights
from dsvae.training.trainer import train

FAST = dict(preset="tiny", limit=64, batch_size=8, sample_every=0, progress=False, log_every=5)


class _Net(nn.Module):
    """A linear layer and a batch norm; forward takes a batch dict like the models' loss."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, batch, phase="model"):
        return self.bn(self.lin(batch["x"]))


def _batches(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(size, 2, generator=g) * 3 + 5} for _ in range(n)]


def test_statistics_become_the_average_over_the_batches():
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.bn.running_mean.fill_(-7.0)  # stale estimates, as training leaves them
        net.bn.running_var.fill_(0.01)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = _batches()
    assert recalibrate_batchnorm(net, batches) == 6
    with torch.no_grad():
        feats = [net.lin(b["x"]) for b in batches]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(net.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(net.bn.running_var, var, atol=1e-4)
    # nothing else changes: weights, momentum, the eval flag
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net.bn.momentum == 0.1 and not net.training
    # eval-mode outputs now standardise the data the statistics came from
    with torch.no_grad():
        out = torch.cat([net(b) for b in batches])
    # (the pooled spread also holds the spread of the batch means, so allow a little over 1)
    assert out.mean(0).abs().max() < 0.05 and (out.std(0) - 1).abs().max() < 0.15


def test_no_batch_norm_no_batches_and_failures_leave_the_model_alone():
    plain = nn.Linear(2, 2)
    calls = []
    assert recalibrate_batchnorm(plain, _batches(), forward=lambda b: calls.append(b)) == 0
    assert calls == [] and batchnorm_layers(plain) == []

    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(DsvaeError, match="at least one batch"):
        recalibrate_batchnorm(net, [])

    def failing():
        yield from _batches(n=2)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        recalibrate_batchnorm(net, failing())
    for k, v in net.state_dict().items():  # the old statistics are back, not a half-made average
        assert torch.equal(v, before[k]), k
    assert net.bn.momentum == 0.1 and net.training


def test_another_weight_set_is_recalibrated_in_place():
    net = _Net()
    other = _Net()
    with torch.no_grad():
        other.lin.weight.mul_(3.0)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    own = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _batches()
    assert recalibrate_state(net, state, batches) == 6
    for k, v in net.state_dict().items():  # the workspace model is restored
        assert torch.equal(v, own[k]), k
    recalibrate_batchnorm(other, batches)  # the same as recalibrating that weight set directly
    for k, v in other.state_dict().items():
        assert torch.allclose(state[k].float(), v.float(), atol=1e-5), k
    assert not torch.allclose(state["bn.running_mean"], own["bn.running_mean"])


def test_trainer_recalibrates_the_weight_average_at_the_end(tmp_path, procedural_h5):
    kw = dict(data=str(procedural_h5), max_steps=6, ema_decay=0.8, **FAST)
    plain = load_checkpoint(train(out=str(tmp_path / "plain"), **kw).run_dir)
    result = train(out=str(tmp_path / "recal"), bn_recalibrate=3, **kw)
    assert result.bn_recalibrated == 3
    recal = load_checkpoint(result.run_dir)
    assert "bn_recalibrated" not in plain
    assert recal["bn_recalibrated"] == {"batches": 3, "step": 6} and recal["step"] == 6
    a, _ = model_weights(plain, "ema")
    b, _ = model_weights(recal, "ema")
    stats = [k for k in a if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats, "the tiny model has batch norm"
    assert all(torch.equal(a[k], b[k]) for k in a if k not in stats and not k.endswith("num_batches_tracked"))
    assert any(not torch.equal(a[k], b[k]) for k in stats)
    # the trained weights keep the statistics training estimated for them
    for k, v in model_weights(plain, "raw")[0].items():
        assert torch.equal(v, model_weights(recal, "raw")[0][k]), k
    # the run's random state is where training left it: a resume continues as without recalibration
    assert torch.equal(plain["rng"]["torch"], recal["rng"]["torch"])


def test_a_finished_run_is_recalibrated_on_resume(tmp_path, procedural_h5, capsys):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, ema_decay=0.8, **FAST).run_dir
    before = load_checkpoint(run)
    rc = main(["train", "--data", str(procedural_h5), "--out", str(run), "--resume", "--max-steps", "4",
               "--bn-recalibrate", "2", "--quiet"])
    after = load_checkpoint(run)
    assert "recomputed over 2 batches" in capsys.readouterr().out
    assert rc == 0 and after["step"] == 4 and after["bn_recalibrated"] == {"batches": 2, "step": 4}
    assert after["metrics"] == before["metrics"] and after["train_config"]["bn_recalibrate"] == 2
    old, new = before["ema"]["weights"], after["ema"]["weights"]
    assert any(not torch.equal(old[k], new[k]) for k in old if "running" in k)


def test_recalibration_options(tmp_path, procedural_h5, capsys):
    resolve = trainer_mod._resolve_config
    assert resolve(trainer_mod.TrainConfig(model="cdsvae", preset="cpu-best"))[0].bn_recalibrate == 200
    assert resolve(trainer_mod.TrainConfig(model="cdsvae", preset="cpu"))[0].bn_recalibrate == 0
    # the preset's recalibration goes with its weight average: switching the average off drops it too
    assert resolve(trainer_mod.TrainConfig(model="cdsvae", preset="cpu-best", ema_decay=0.0))[0].bn_recalibrate == 0
    with pytest.raises(DsvaeError, match="bn_recalibrate must be"):
        train(data=str(procedural_h5), out=str(tmp_path / "bad"), max_steps=1, bn_recalibrate=-1, **FAST)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(DsvaeError, match="weight average"):  # nothing to recompute without one
        train(data=str(procedural_h5), out=str(tmp_path / "noavg"), max_steps=1, bn_recalibrate=5, **FAST)
    assert not (tmp_path / "noavg").exists()
    # a model without batch norm has nothing to recompute: the option is a no-op, not an error
    res = train(data=str(procedural_h5), out=str(tmp_path / "nonorm"), max_steps=2, bn_recalibrate=5,
                ema_decay=0.9, model_config={"norm": "none"}, **FAST)
    assert res.bn_recalibrated == 0 and "bn_recalibrated" not in load_checkpoint(res.run_dir)
    rc = main(["train", "--data", str(procedural_h5), "--out", str(tmp_path / "neg"), "--preset", "tiny",
               "--max-steps", "1", "--bn-recalibrate", "-2", "--quiet"])
    assert rc != 0 and "bn_recalibrate must be" in capsys.readouterr().err
