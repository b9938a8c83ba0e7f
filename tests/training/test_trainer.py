import json
import os
import subprocess
import sys

import pytest
import torch

import dsvae
from dsvae.cli import main
from dsvae.errors import DsvaeError, TrainingDiverged
from dsvae.models.dsvae import DSVAE
from dsvae.training import trainer as trainer_mod
from dsvae.training.trainer import train

FAST = dict(preset="tiny", limit=240, batch_size=8, sample_every=0, progress=False, log_every=5)


def _run(tmp_path, data, name="run", **kw):
    return train(data=str(data), out=str(tmp_path / name), **{**FAST, **kw})


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_loss_falls(tmp_path, procedural_h5):
    res = _run(tmp_path, procedural_h5, max_steps=60, lr=3e-3)
    lines = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(5, 61, 5))
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"]
    assert lines[-1]["recon"] < lines[0]["recon"]


def test_run_folder_and_checkpoint_round_trip(tmp_path, procedural_h5):
    res = _run(tmp_path, procedural_h5, max_steps=10, checkpoint_every=4, keep_checkpoints=2, sample_every=5)
    run = res.run_dir
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_type"] == "dsvae" and cfg["model_config"]["image_size"] == 16
    assert cfg["train"]["batch_size"] == 8
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.pt", "step_0000008.pt", "step_0000010.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000005.gif", "step_0000010.gif"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["format_version"] >= 1 and ckpt["step"] == 10
    assert set(ckpt["optimizers"]) == {"main"} and "torch" in ckpt["rng"]
    loaded = dsvae.load(run)
    assert isinstance(loaded, DSVAE) and not loaded.training
    model = res.model.eval()
    x = torch.rand(2, 8, 3, 16, 16)
    with torch.no_grad():
        a, b = model.encode(x), loaded.encode(x)
        assert torch.equal(a.f_mean, b.f_mean) and torch.equal(a.z_mean, b.z_mean)
        assert torch.equal(model.decode(a.f_mean, a.z_mean), loaded.decode(b.f_mean, b.z_mean))
    # the checkpoint file alone rebuilds the model too
    alone = dsvae.load(run / "checkpoints" / "step_0000008.pt")
    assert alone.config == loaded.config
    # device strings as the CLI takes them: "auto" picks CUDA when there is one, a typo is a clear error
    auto = dsvae.load(run, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(auto.parameters()).device.type == expected
    with pytest.raises(DsvaeError, match="unknown device"):
        dsvae.load(run, device="gpu0")


def _killed_run(tmp_path, data, monkeypatch, batches: int, **kw) -> None:
    """A run (folder "killed") interrupted while reading its batch number ``batches``."""
    calls = {"n": 0}
    real_batch = trainer_mod._DeviceData.batch

    def dying_batch(self, idx, key=0):
        calls["n"] += 1
        if calls["n"] == batches:
            raise KeyboardInterrupt
        return real_batch(self, idx, key)

    monkeypatch.setattr(trainer_mod._DeviceData, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, data, name="killed", **kw)
    monkeypatch.setattr(trainer_mod._DeviceData, "batch", real_batch)


@pytest.mark.parametrize("model, model_config", [("dsvae", {}), ("cdsvae", {"pair_share": 0.5})])
def test_resume_is_exact(tmp_path, procedural_h5, monkeypatch, model, model_config):
    kw = dict(max_steps=14, checkpoint_every=4, model=model, model_config=model_config)
    full = _run(tmp_path, procedural_h5, name="full", **kw)
    # a run killed at step 7 (after its checkpoint at step 4), then resumed to the end (with a pair share, the
    # partners drawn after the resume are those the unbroken run drew)
    _killed_run(tmp_path, procedural_h5, monkeypatch, 8, **kw)
    killed = tmp_path / "killed"
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    resumed = train(data=str(procedural_h5), out=str(killed), resume=True, progress=False)
    assert resumed.step == 14
    a, b = _weights(full.run_dir), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_resume_refuses_options_it_cannot_change(tmp_path, procedural_h5, capsys):
    """Options outside RESUMABLE that differ from the saved run are an error, not silently ignored."""
    first = _run(tmp_path, procedural_h5, max_steps=2, lr=2e-3, model_config={"z_dim": 3})
    for kw, flag in [({"lr": 1e-3}, "--lr"), ({"batch_size": 4}, "--batch-size"),
                     ({"model_config": {"z_dim": 5}}, "--set"), ({"model": "cdsvae"}, "--model")]:
        with pytest.raises(DsvaeError, match=f"{flag} cannot change when a run is resumed"):
            train(data=str(procedural_h5), out=str(first.run_dir), resume=True, max_steps=3, progress=False, **kw)
    assert torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 2  # untouched
    # the same values, or the options that may change (budget, precision, logging), are fine
    res = train(data=str(procedural_h5), out=str(first.run_dir), resume=True, max_steps=3, lr=2e-3,
                model_config={"z_dim": 3}, amp="off", log_every=1, progress=False)
    assert res.step == 3
    # the CLI passes only what was typed: a bare --resume continues a cdsvae run (no default --model dsvae)
    run = tmp_path / "cli"
    common = ["train", "--data", str(procedural_h5), "--out", str(run), "--limit", "64", "--sample-every", "0",
              "--quiet"]
    assert main([*common, "--model", "cdsvae", "--preset", "tiny", "--batch-size", "8", "--max-steps", "2",
                 "--set", "z_dim=3"]) == 0
    assert main([*common, "--resume", "--max-steps", "3"]) == 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    capsys.readouterr()
    assert main([*common, "--resume", "--max-steps", "4", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--lr cannot change" in err and err.count("\n") == 1


def test_lr_factor_shapes():
    lr_factor = trainer_mod.lr_factor
    assert [lr_factor("constant", p, 0.1) for p in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]
    for schedule in ("cosine", "linear"):
        values = [lr_factor(schedule, p / 10, 0.1) for p in range(11)]
        assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
        assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
        assert lr_factor(schedule, 0.5, 0.1) == pytest.approx(0.55)  # both pass the midpoint halfway
        assert lr_factor(schedule, 2.0, 0.1) == pytest.approx(0.1)  # clipped at the end
    assert lr_factor("cosine", 0.25, 0.0) > lr_factor("linear", 0.25, 0.0)  # cosine stays high longer
    with pytest.raises(DsvaeError, match="unknown learning-rate schedule"):
        lr_factor("step", 0.5, 0.1)


def _lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_decays_over_steps_and_survives_resume(tmp_path, procedural_h5, monkeypatch):
    kw = dict(max_steps=12, checkpoint_every=4, log_every=1, lr=2e-3, lr_schedule="cosine", min_lr_ratio=0.1)
    full = _run(tmp_path, procedural_h5, name="full", **kw)
    lrs = _lrs(full.run_dir)
    # logged with each step: the rate that step used, from lr down towards min_lr_ratio * lr
    assert lrs[0] == pytest.approx(2e-3) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs == pytest.approx([2e-3 * trainer_mod.lr_factor("cosine", k / 12, 0.1) for k in range(12)])
    ckpt = torch.load(full.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["lr_progress"] == pytest.approx(1.0)
    # killed after its step-4 checkpoint and resumed: the schedule goes on where it stopped
    _killed_run(tmp_path, procedural_h5, monkeypatch, 7, **kw)
    resumed = train(data=str(procedural_h5), out=str(tmp_path / "killed"), resume=True, progress=False)
    assert resumed.step == 12
    assert _lrs(tmp_path / "killed") == pytest.approx(lrs, rel=1e-9)
    a, b = _weights(full.run_dir), _weights(tmp_path / "killed")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_lr_decay_can_end_early_and_hold(tmp_path, procedural_h5):
    """--lr-decay-end 0.5: the decay is over after half the budget, the rest runs at the final rate."""
    res = _run(tmp_path, procedural_h5, max_steps=12, log_every=1, lr=2e-3, lr_schedule="cosine", min_lr_ratio=0.1,
               lr_decay_end=0.5)
    lrs = _lrs(res.run_dir)
    assert all(a > b for a, b in zip(lrs[:7], lrs[1:7]))  # steps 0..6 decay
    assert lrs[6:] == pytest.approx([2e-4] * 6)  # from progress 6/12 = 0.5 on: the floor
    assert lrs[3] == pytest.approx(2e-3 * trainer_mod.lr_factor("cosine", 3 / 12 / 0.5, 0.1))
    assert trainer_mod.lr_factor("linear", 0.25, 0.0, 0.5) == pytest.approx(0.5)
    assert trainer_mod.lr_factor("constant", 0.9, 0.1, 0.5) == 1.0


def test_lr_schedule_follows_the_time_budget(tmp_path, procedural_h5, monkeypatch):
    """With --max-minutes the schedule ends with the minutes when they run out before the steps."""
    clock = {"t": 1000.0}

    def fake_time():
        clock["t"] += 0.25  # a quarter of a second per call: the 0.1-minute budget ends after ~20 steps
        return clock["t"]

    monkeypatch.setattr(trainer_mod.time, "time", fake_time)
    bars = []

    def recording_tqdm(*args, **kwargs):
        bars.append((kwargs.get("desc", ""), real_tqdm(*args, **kwargs)))
        return bars[-1][1]

    real_tqdm = trainer_mod.tqdm
    monkeypatch.setattr(trainer_mod, "tqdm", recording_tqdm)
    res = _run(tmp_path, procedural_h5, max_steps=10_000, max_minutes=0.1, log_every=1, lr=1e-3,
               lr_schedule="linear", min_lr_ratio=0.2)
    assert 5 < res.step < 100
    # the progress bar counted towards the steps the budget allowed, not towards the 10,000
    ((desc, bar),) = [b for b in bars if b[0].startswith("train")]
    assert "0.1 min budget" in desc and bar.total == res.step
    lrs = _lrs(res.run_dir)
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] <= 0.35e-3  # the last steps run near min_lr_ratio * lr
    # the steps alone would have left the rate near its start
    assert lrs[len(lrs) // 2] < 0.75e-3


def test_steps_in_budget_extrapolates_the_pace():
    steps_in_budget = trainer_mod.steps_in_budget
    assert steps_in_budget(100, 0, 60.0, 600.0, 100_000) == 1000  # 100 steps a minute, ten minutes
    assert steps_in_budget(150, 100, 30.0, 600.0, 100_000) == 1100  # a resumed run: its own pace
    assert steps_in_budget(500, 0, 60.0, 600.0, 2_000) == 2_000  # the steps end first
    assert steps_in_budget(100, 0, 700.0, 600.0, 100_000) == 100  # past the budget: this step is the last
    assert steps_in_budget(0, 0, 0.0, 600.0, 5_000) == 5_000  # no pace yet


def test_existing_run_folder(tmp_path, procedural_h5):
    _run(tmp_path, procedural_h5, max_steps=2)
    with pytest.raises(DsvaeError, match="already exists"):
        _run(tmp_path, procedural_h5, max_steps=2)
    res = _run(tmp_path, procedural_h5, max_steps=3, overwrite=True)
    assert res.step == 3
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(DsvaeError, match="not a dsvae run folder"):
        _run(tmp_path, procedural_h5, name="not_a_run", max_steps=2, overwrite=True)
    assert (other / "thesis.tex").exists()


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, procedural_h5, monkeypatch):
    real_loss = DSVAE.loss
    calls = {"n": 0}

    def nan_after_six(self, batch, phase="main"):
        calls["n"] += 1
        terms = real_loss(self, batch, phase)
        if calls["n"] > 6:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(DSVAE, "loss", nan_after_six)
    with pytest.raises(TrainingDiverged, match="NaN or infinite by step 7.*step 4"):
        _run(tmp_path, procedural_h5, max_steps=20, checkpoint_every=4)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_cli_train_and_errors(tmp_path, procedural_h5, capsys):
    out = tmp_path / "cli_run"
    rc = main(["train", "--data", str(procedural_h5), "--out", str(out), "--preset", "tiny", "--max-steps", "3",
               "--limit", "64", "--batch-size", "8", "--sample-every", "0", "--quiet"])
    assert rc == 0 and (out / "checkpoints" / "last.pt").exists()
    assert "trained 3 steps" in capsys.readouterr().out
    for args, msg in [
        (["--data", str(tmp_path / "none.h5")], "does not exist"),
        (["--data", str(procedural_h5), "--set", "z_dim=0"], "z_dim must be positive"),
        (["--data", str(procedural_h5), "--preset", "huge"], "unknown preset"),
        (["--data", str(procedural_h5), "--batch-size", "-4"], "batch_size must be a positive"),
        (["--data", str(procedural_h5), "--lr-schedule", "cosine", "--min-lr-ratio", "2"], "min_lr_ratio must be in"),
        (["--data", str(procedural_h5), "--lr-schedule", "cosine", "--lr-decay-end", "0"], "lr_decay_end must be in"),
    ]:
        rc = main(["train", "--out", str(tmp_path / "bad"), "--preset", "tiny", "--quiet", *args])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, procedural_h5):
    """torchrun with 2 gloo processes gives the same weights as 1 process on the same global batch."""
    common = ["-m", "dsvae", "train", "--data", str(procedural_h5), "--preset", "tiny", "--max-steps", "3",
              "--batch-size", "8", "--limit", "96", "--sample-every", "0", "--quiet", "--set", "norm=group",
              "--log-every", "1", "--max-minutes", "60",  # the minutes are synchronised across ranks
              "--ema-decay", "0.9"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    # Adam's first updates are ~lr * sign(grad): on near-zero gradients, rounding differences of the
    # all-reduce can move a weight by a fraction of one step (and grow over many steps), so the run is
    # short and the tolerance a tenth of a step (measured: ~6e-6 after 3 steps, lr 2e-3).
    lr = json.loads((tmp_path / "one" / "config.json").read_text())["train"]["lr"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=0.1 * lr, rtol=0), k
    ema_a, ema_b = (torch.load(tmp_path / r / "checkpoints" / "last.pt", weights_only=True)["ema"]
                    for r in ("one", "two"))
    assert ema_a["updates"] == ema_b["updates"] == 3
    for k in ema_a["weights"]:
        assert torch.allclose(ema_a["weights"][k], ema_b["weights"][k], atol=0.1 * lr, rtol=0), k
    logs = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("one", "two")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == list(range(1, 4))
    for x, y in zip(*logs):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_a_preset_can_set_the_lr_schedule_and_weight_average():
    """cdsvae `cpu-best` starts at 2e-3 and decays the rate (cosine) over 60 minutes, keeps a weight average
    and carries its model options; explicit values win; presets without them train at a constant rate, no average."""
    best, model_cfg = trainer_mod._resolve_config(trainer_mod.TrainConfig(model="cdsvae", preset="cpu-best"))
    assert best.lr_schedule == "cosine" and best.max_minutes == 60 and best.ema_decay == 0.998
    assert best.lr == 2e-3  # twice the cpu preset's rate
    assert tuple(model_cfg["widths"]) == (32, 64, 128, 256) and model_cfg["prior_components"] == 32
    mine, _ = trainer_mod._resolve_config(trainer_mod.TrainConfig(model="cdsvae", preset="cpu-best",
                                                                  lr_schedule="constant"))
    assert mine.lr_schedule == "constant" and mine.ema_decay == 0.998
    no_average, _ = trainer_mod._resolve_config(trainer_mod.TrainConfig(model="cdsvae", preset="cpu-best",
                                                                        ema_decay=0.0))
    assert no_average.ema_decay == 0.0  # every ingredient switches off
    plain, _ = trainer_mod._resolve_config(trainer_mod.TrainConfig(model="cdsvae", preset="cpu"))
    assert plain.lr_schedule == "constant" and plain.ema_decay == 0.0


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, tmp_path, procedural_h5, tiny_judge):
    import warnings

    from dsvae.evaluation.protocol import evaluate

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trainer_mod.cpu_has_native_bf16() in (True, False)  # this machine's answer, whichever it is
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(trainer_mod.SlowBf16, match="--amp off"):
        assert trainer_mod.amp_dtype("bf16", cpu) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer_mod.amp_dtype("off", cpu) is None and trainer_mod.amp_dtype("auto", cpu) is None
        assert trainer_mod.amp_dtype("bf16", cuda) is torch.bfloat16  # a GPU's bf16 is native
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=1, **FAST).run_dir
    with pytest.warns(trainer_mod.SlowBf16):
        evaluate(run, tiny_judge.path, procedural_h5, repeats=1, limit=9, amp="bf16", progress=False)
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer_mod.amp_dtype("bf16", cpu) is torch.bfloat16


def test_partner_frames_are_colour_neighbours(procedural_h5):
    from dsvae.data.dataset import SpritesDataset
    from dsvae.data.mixing import dataset_colour_neighbours

    ds = SpritesDataset(str(procedural_h5), "train", limit=40)
    model = dsvae.models.build_model("cdsvae", {**dsvae.models.presets.get_preset("cdsvae", "tiny")[0],
                                                "pair_share": 0.5, "pair_neighbours": 2})
    partners = trainer_mod._partners(model, ds, show=False)
    assert torch.equal(partners, dataset_colour_neighbours(ds, 2))
    data = trainer_mod._DeviceData(ds, torch.device("cpu"), uses_labels=False, partners=partners)
    idx = torch.arange(0, 40, 3)
    a, b, c = data.batch(idx, key=7), data.batch(idx, key=7), data.batch(idx, key=8)
    assert set(a) == {"x", "index", "x_pair"} and a["x_pair"].shape == a["x"].shape
    assert torch.equal(a["x_pair"], b["x_pair"])  # the step decides the draw
    assert not torch.equal(a["x_pair"], c["x_pair"])
    videos = ds.batch(torch.arange(40))["x"]
    for row, i in zip(a["x_pair"], idx):  # each partner is one of its sequence's two nearest
        assert any(torch.equal(row, videos[j]) for j in partners[i])
    plain = dsvae.models.build_model("dsvae", dsvae.models.presets.get_preset("dsvae", "tiny")[0])
    assert trainer_mod._partners(plain, ds, show=False) is None  # a model that reads no partners gets none
