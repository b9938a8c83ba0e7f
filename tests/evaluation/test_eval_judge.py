import pytest
import torch

from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.data.schema import HEAD_CLASSES, HEADS
from dsvae.errors import DsvaeError
from dsvae.evaluation.judge import Judge, JudgeConfig, judge_config, load_judge, test_judge, train_judge
from dsvae.training.checkpoint import save_checkpoint


def test_tiny_judge_is_accurate(tiny_judge):
    acc = tiny_judge.test_accuracy
    assert set(acc) == set(HEADS)
    assert acc["action"] >= 0.99
    assert min(acc.values()) >= 0.95
    assert tiny_judge.seconds > 0 and tiny_judge.seq_per_s > 0


def test_architecture_and_presets():
    field = judge_config("field")
    assert field.widths == (64, 128, 256, 512) and field.image_size == 64
    assert field.feature_dim == 128 and field.hidden_dim == 256
    assert judge_config("field", image_size=32).widths == (64, 128, 256)
    assert judge_config("tiny").widths == (8, 16) and judge_config("tiny").image_size == 16
    judge = Judge(judge_config("tiny")).eval()
    assert judge.lstm.bidirectional and judge.lstm.num_layers == 1
    logits = judge(torch.rand(3, 8, 3, 16, 16))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {h: (3, HEAD_CLASSES[h]) for h in HEADS}
    assert HEAD_CLASSES["action"] == 9
    with pytest.raises(DsvaeError):
        judge(torch.rand(3, 8, 3, 32, 32))  # forward takes the judge's size; predict resizes
    probs = judge.predict(torch.rand(2, 8, 3, 32, 32))
    assert torch.allclose(probs["hair"].sum(-1), torch.ones(2))
    with pytest.raises(DsvaeError):
        JudgeConfig(image_size=64, widths=(8, 16)).validate()
    with pytest.raises(DsvaeError):
        judge_config("field", image_size=48)


def test_save_load_round_trip(tiny_judge, procedural_h5):
    loaded = load_judge(tiny_judge.path)
    assert not loaded.training and loaded.config == tiny_judge.judge.config
    assert loaded.meta["test_accuracy"] == tiny_judge.test_accuracy
    assert loaded.meta["data_source"] == "procedural"
    x = SpritesDataset(procedural_h5, "test", image_size=16, limit=6).batch(torch.arange(6))["x"]
    with torch.no_grad():
        a, b = tiny_judge.judge.eval()(x), loaded(x)
    assert all(torch.equal(a[h], b[h]) for h in HEADS)
    assert test_judge(loaded, procedural_h5, limit=40) == test_judge(tiny_judge.judge, procedural_h5, limit=40)
    ckpt = torch.load(tiny_judge.path, weights_only=True)
    assert ckpt["model_type"] == "judge" and ckpt["format"] == "dsvae-checkpoint"


def test_train_refuses_existing_output(tmp_path, procedural_h5):
    out = tmp_path / "j.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(DsvaeError, match="already exists"):
        train_judge(procedural_h5, out, config="tiny", epochs=0.01, progress=False)
    assert out.read_bytes() == b"keep me"
    res = train_judge(procedural_h5, out, config="tiny", epochs=1, limit=64, batch_size=32, progress=False,
                      overwrite=True)
    assert res.steps == 2 and load_judge(out).meta["train_config"]["limit"] == 64


def test_cli_train_and_test(tmp_path, procedural_h5, tiny_judge, capsys):
    out = tmp_path / "cli.pt"
    rc = main(["judge", "train", "--data", str(procedural_h5), "--out", str(out), "--preset", "tiny",
               "--epochs", "1", "--limit", "45", "--batch-size", "16", "--quiet"])
    assert rc == 0 and out.is_file()
    assert "test accuracy" in capsys.readouterr().out
    rc = main(["judge", "test", "--judge", str(tiny_judge.path), "--data", str(procedural_h5), "--limit", "90",
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "| action | body | bottom | top | hair |" in text
    assert text.count("%") == 5


def _cli_error(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("dsvae: error: ") and err.count("\n") == 1
    return err


def test_bad_judge_files(tmp_path, procedural_h5, capsys):
    data = str(procedural_h5)
    err = _cli_error(["judge", "test", "--judge", str(tmp_path / "missing.pt"), "--data", data], capsys)
    assert "does not exist" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    _cli_error(["judge", "test", "--judge", str(junk), "--data", data], capsys)
    model_ckpt = tmp_path / "model.pt"
    save_checkpoint(model_ckpt, {"model_type": "dsvae", "model_config": {}, "model": {}})
    err = _cli_error(["judge", "test", "--judge", str(model_ckpt), "--data", data], capsys)
    assert "not a judge" in err
    _cli_error(["judge", "test", "--judge", str(tmp_path), "--data", data], capsys)
    with pytest.raises(DsvaeError):
        load_judge(junk)


def test_lr_schedule(procedural_h5, tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train_judge(procedural_h5, tmp_path / "cos.pt", config="tiny", epochs=1, limit=64, batch_size=16, progress=False)
    assert seen[0] == pytest.approx(1e-3) and seen == sorted(seen, reverse=True) and seen[-1] < 0.2e-3
    seen.clear()
    train_judge(procedural_h5, tmp_path / "const.pt", config="tiny", epochs=1, limit=64, batch_size=16,
                progress=False, lr_schedule="constant")
    assert seen == [pytest.approx(1e-3)] * 4
    assert load_judge(tmp_path / "const.pt").meta["train_config"]["lr_schedule"] == "constant"
    with pytest.raises(DsvaeError, match="schedule"):
        train_judge(procedural_h5, tmp_path / "bad.pt", config="tiny", epochs=1, lr_schedule="step", progress=False)
