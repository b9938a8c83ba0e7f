"""The switchable speed options: same loss and gradients as the plain path, and the benchmark's report."""

import json

import pytest
import torch

from dsvae.bench import DEFAULT_VARIANTS, check_variant, parse_variant, parse_variants
from dsvae.cli import main
from dsvae.errors import DsvaeError
from dsvae.training.trainer import train

FAST = dict(preset="tiny", limit=240, batch_size=8, sample_every=0, progress=False, log_every=1)


def test_variant_names():
    assert [v.label for v in parse_variants(None, "cpu")] == list(DEFAULT_VARIANTS)
    assert "+allocator" not in [v.label for v in parse_variants(None, "cuda")]
    v = parse_variant("bf16+allocator")
    assert v.label == "+allocator+bf16" and v.allocator and v.bf16 and not v.channels_last and not v.compile
    assert parse_variant("all-compile").levers == ("allocator", "channels_last", "bf16")
    assert parse_variant("all", "cuda").levers == ("channels_last", "bf16", "compile")
    assert parse_variant("reference").levers == ()
    assert [v.label for v in parse_variants("reference, +bf16")] == ["reference", "+bf16"]


@pytest.mark.parametrize("spec, device, message", [
    ("fast", "cpu", "unknown option 'fast'"),
    ("all-fast", "cpu", "unknown option 'fast'"),
    ("+allocator", "cuda", "CPU setting"),
    ("bf16+bf16", "cpu", "twice"),
    ("+", "cpu", "empty"),
])
def test_variant_errors(spec, device, message):
    with pytest.raises(DsvaeError, match=message):
        parse_variant(spec, device)
    with pytest.raises(DsvaeError, match="repeat"):
        parse_variants("reference,reference")


def test_channels_last_is_the_same_computation():
    r = check_variant("+channels_last", preset="tiny")
    assert r["param_names_equal"]
    assert r["loss_rel_diff"] < 1e-6
    assert r["grad_rel_diff"] < 1e-4 and r["grad_cosine_min"] > 0.99999


def test_fast_path_matches_plain_within_bf16_tolerance():
    r = check_variant("all-compile", preset="tiny")
    assert r["variant"] == "all-compile" and r["param_names_equal"]
    # bf16 really ran (the values differ) ...
    assert r["loss_variant"] != r["loss_reference"] and r["grad_rel_diff"] > 1e-4
    # ... and agrees with float32 to bf16 accuracy
    assert r["loss_rel_diff"] < 1e-3
    assert r["grad_rel_diff"] < 0.15 and r["grad_cosine_min"] > 0.98


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_speed_options_keep_the_elbo(tmp_path, procedural_h5):
    plain = train(data=str(procedural_h5), out=str(tmp_path / "plain"), max_steps=8, amp="off", **FAST)
    cl = train(data=str(procedural_h5), out=str(tmp_path / "cl"), max_steps=8, amp="off", channels_last=True, **FAST)
    fast = train(data=str(procedural_h5), out=str(tmp_path / "fast"), max_steps=8, amp="bf16", channels_last=True,
                 **FAST)
    a, b, c = _losses(plain.run_dir), _losses(cl.run_dir), _losses(fast.run_dir)
    assert len(a) == len(b) == len(c) == 8
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 1e-4
    assert max(abs(x - y) / x for x, y in zip(a, c)) < 2e-2
    assert c != a  # bf16 autocast was on
    # channels_last is a layout, not a parameter change: the checkpoints hold the same names
    assert plain.model.state_dict().keys() == fast.model.state_dict().keys()
    assert json.loads((fast.run_dir / "config.json").read_text())["train"]["channels_last"] is True


def test_trainer_compile_switch(tmp_path, procedural_h5, monkeypatch):
    import torch._inductor.config as inductor_config

    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(inductor_config, "fallback_random", False)  # restored after the test
    res = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=2, compile=True, **FAST)
    assert compiled == [res.model]
    assert inductor_config.fallback_random  # compiled code draws eager's noise
    compiled.clear()
    train(data=str(procedural_h5), out=str(tmp_path / "run2"), max_steps=1, **FAST)
    assert compiled == []


def test_bench_cli_report(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
            "--variants", "reference,+allocator+channels_last+bf16", "--out", str(out), "--markdown", str(md),
            "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "dsvae-bench" and report["torch_version"] == torch.__version__
    assert "bench" in report["command"] and "--preset tiny" in report["command"]
    hw = report["hardware"]
    assert hw["threads"] == 1 and hw["cpu_count"] >= 1 and hw["cpu_model"]
    ref, fast = report["rows"]
    assert (ref["variant"], fast["variant"]) == ("reference", "+allocator+channels_last+bf16")
    assert ref["speedup"] == 1.0 and ref["loss_dev"] == 0.0
    assert 0 < fast["loss_dev"] < 1e-2  # bf16: close to, but not exactly, the float32 losses
    for row in (ref, fast):
        assert row["batch"] == 2 and row["device"] == "cpu" and len(row["step_ms"]) == 2
        assert row["seq_per_s"] > 0 and row["frames_per_s"] == pytest.approx(8 * row["seq_per_s"])
        assert row["gflop_per_s"] == pytest.approx(row["seq_per_s"] * report["gflop_per_sequence"])
        # at least the weights, their gradients and Adam's two moments
        assert row["peak_mb"] * 2**20 > 4 * 4 * report["parameters"]
    assert len(ref["losses"]) == 3 and ref["losses"][0] == pytest.approx(fast["losses"][0], rel=1e-2)
    table = md.read_text()
    assert "| reference |" in table and "| +allocator+channels_last+bf16 |" in table
    assert hw["cpu_model"] in table and report["command"] in table
    assert table in printed
    # an existing report is kept unless --overwrite
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_bench_compares_configs(tmp_path, capsys):
    """--compare times the same variants with other config values, interleaved; a config that only skips
    work (views without gradients) gives the same losses and fewer operations."""
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "cdsvae", "--preset", "tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1",
            "--threads", "1", "--variants", "reference", "--compare", "view_grad=false",
            "--compare", "motion_flip=0", "view_grad=false", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    base, no_grad, both = report["rows"]
    assert [r["variant"] for r in report["rows"]] == [
        "reference", "reference [view_grad=false]", "reference [motion_flip=0,view_grad=false]"]
    assert "model_config" not in base and "vs_base" not in base
    assert no_grad["model_config"] == {"view_grad": False}
    assert both["model_config"] == {"motion_flip": 0, "view_grad": False}
    for row in (no_grad, both):
        assert row["vs_base"] == pytest.approx(base["step_ms_median"] / row["step_ms_median"])
    # the same first loss (same weights and noise), computed with less work; then other gradients, other weights
    assert no_grad["losses"][0] == pytest.approx(base["losses"][0], rel=1e-6)
    assert no_grad["losses"][-1] != pytest.approx(base["losses"][-1], rel=1e-6)
    compared = report["compare"]
    assert set(compared) == {"[view_grad=false]", "[motion_flip=0,view_grad=false]"}
    assert compared["[view_grad=false]"]["gflop_per_sequence"] < report["gflop_per_sequence"]
    no_grad_flops = compared["[view_grad=false]"]["gflop_per_sequence"]
    assert no_grad["gflop_per_s"] == pytest.approx(no_grad["seq_per_s"] * no_grad_flops)
    assert "vs base config" in printed and "| reference [view_grad=false] |" in printed
    assert "--compare view_grad=false --compare motion_flip=0 view_grad=false" in report["command"]


@pytest.mark.parametrize("extra, message", [
    (["--variants", "fast"], "unknown option 'fast'"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--variants", "+compile", "--warmup", "0"], "warm-up"),
    (["--preset", "huge"], "unknown preset"),
    (["--model", "cdsvae", "--preset", "tiny", "--compare", "motion_flip=2"], "motion_flip must be in"),
    (["--model", "cdsvae", "--preset", "tiny", "--compare", "colour=1"], "unknown CDSVAEConfig option"),
    (["--compare", "z_dim=8", "--compare", "z_dim=8"], "given twice"),
])
def test_bench_cli_user_errors(extra, message, capsys):
    assert main(["bench", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsvae: error:") and message in err


def test_bench_eval_times_the_protocol(tmp_path, procedural_h5, capsys):
    out = tmp_path / "eval.json"
    args = ["bench", "--eval", str(procedural_h5), "--preset", "tiny", "--judge-preset", "tiny", "--eval-limit", "16",
            "--repeats", "1", "--threads", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [r["amp"] for r in report["rows"]] == ["off", "bf16"]
    for row in report["rows"]:
        assert row["videos"] == 16 and row["repeats"] == 1 and row["videos_in_split"] > 16
        assert set(row["timing"]) >= {"encode", "dynamic", "static", "swap", "total"}
        # extrapolated to the whole split: more videos take longer
        assert row["full_split_s"] > row["seconds"] > 0
    assert "| tiny | tiny | bf16 | 16 | 1 |" in capsys.readouterr().out
