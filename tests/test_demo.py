"""`dsvae demo` end to end in its tiny configuration (seconds), its refusals, and the loss plot."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dsvae.cli import main
from dsvae.demo import DEMO_CONFIGS, FILES, GIFS, TARGET, judge_cache_path, plot_loss_curve, run_demo
from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.presets import get_preset

T = 8  # frames per sequence
#: The tiny config, keeping its judge beside the data set like the full demo does.
CACHING_TINY = dataclasses.replace(DEMO_CONFIGS["tiny"], cache_judge=True)


@pytest.fixture
def data_file(procedural_h5, tmp_path) -> Path:
    """The session's procedural set, linked into this test's folder (the demo caches its judge beside it)."""
    link = tmp_path / "data" / "procedural.h5"
    link.parent.mkdir()
    link.symlink_to(procedural_h5)
    return link


@pytest.fixture(scope="module")
def tiny_demo(procedural_h5, tmp_path_factory):
    """One tiny demo run (and its folder) shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("demo")
    (root / "data").mkdir()
    link = root / "data" / "procedural.h5"
    link.symlink_to(procedural_h5)
    lines: list[str] = []
    res = run_demo(out=root / "out", data_file=link, config=CACHING_TINY, device="cpu", progress=False,
                   log=lines.append)
    return res, link, lines


def _gif_frames(path: Path) -> tuple[int, int | None, tuple[int, int]]:
    with Image.open(path) as im:
        return im.n_frames, im.info.get("loop"), im.size


def test_tiny_demo_writes_every_promised_file(tiny_demo):
    res, _, lines = tiny_demo
    assert set(res.files) == set(FILES)
    for name in FILES:
        assert (res.out / name).is_file() and res.files[name] == res.out / name
    for name in GIFS:
        n_frames, loop, size = _gif_frames(res.out / name)
        assert n_frames == T, name  # one GIF frame per time step
        assert loop == 0, name      # loops forever
        assert min(size) > 32
    with Image.open(res.out / "loss.png") as im:
        im.load()
        assert im.format == "PNG" and im.size == (800, 450)
    # the training run and the judge are kept; nothing half-written is left behind
    assert (res.out / "run" / "checkpoints" / "last.pt").is_file()
    assert (res.out / "run" / "metrics.jsonl").is_file()
    assert (res.out / "judge.pt").is_file()
    assert not list(res.out.rglob("*.partial"))
    assert any(line.startswith("training:") for line in lines)


def test_tiny_demo_results_and_report(tiny_demo):
    res, link, _ = tiny_demo
    results = json.loads((res.out / "RESULTS.json").read_text())
    for test in ("swap", "static", "dynamic"):
        assert results[test]["status"] == "ok"
    swap = results["swap"]
    assert 0.0 <= swap["attribute_accuracy"]["mean"] <= 1.0 and 0.0 <= swap["action_accuracy"]["mean"] <= 1.0
    assert results["data"]["split"] == "test" and results["n_videos"] == 24
    demo = results["demo"]
    assert demo["summary"]["swap_attribute_accuracy"] == swap["attribute_accuracy"]["mean"]
    assert demo["passed"] == (min(demo["summary"]["swap_attribute_accuracy"],
                                  demo["summary"]["swap_action_accuracy"]) >= TARGET)
    assert demo["training"]["steps"] == 4 and demo["training"]["preset"] == "tiny"
    assert demo["judge"]["origin"] == "trained by this demo"
    assert set(demo["seconds"]) >= {"data", "judge", "training", "outputs", "evaluation", "total"}
    assert res.summary == demo["summary"] and res.passed == demo["passed"]

    page = (res.out / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    for name in FILES:
        if name != "index.html":
            assert name in referenced, name
    assert f"{100 * swap['attribute_accuracy']['mean']:.1f}%" in page
    # the trained judge is kept beside the data set for later demos
    assert judge_cache_path(link, CACHING_TINY).is_file()


def test_second_demo_reuses_the_judge_and_resume_continues(tiny_demo, tmp_path):
    _, link, _ = tiny_demo
    out = tmp_path / "again"
    first = run_demo(out=out, data_file=link, config=CACHING_TINY, device="cpu", progress=False)
    assert first.results["demo"]["judge"]["origin"].startswith("reused (")
    assert first.seconds["judge"] < 5
    with pytest.raises(DsvaeError, match="already exists"):
        run_demo(out=out, data_file=link, config=CACHING_TINY, device="cpu", progress=False)
    resumed = run_demo(out=out, data_file=link, config=CACHING_TINY, device="cpu", progress=False, resume=True)
    assert resumed.results["demo"]["judge"]["origin"] == "reused from the demo folder"
    assert resumed.results["demo"]["training"]["steps"] == 4  # finished run: no further steps
    assert (out / "index.html").is_file()
    with pytest.raises(DsvaeError, match="other settings"):
        run_demo(out=out, data_file=link, config=CACHING_TINY, device="cpu", progress=False, resume=True, seed=1)
    replaced = run_demo(out=out, data_file=link, config="tiny", device="cpu", progress=False, overwrite=True, seed=1)
    assert replaced.results["demo"]["seed"] == 1
    assert replaced.results["demo"]["judge"]["origin"] == "trained by this demo"  # another seed: another judge


def test_cli_demo_prints_where_the_files_are(data_file, tmp_path, capsys):
    out = tmp_path / "cli-demo"
    rc = main(["demo", "--config", "tiny", "--out", str(out), "--data-file", str(data_file), "--device", "cpu",
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "swap accuracy on the test split (24 videos)" in captured.out
    assert f"open {out / 'index.html'}" in captured.out
    for name in FILES:
        assert (out / name).is_file()
    assert captured.err == ""  # --quiet: no progress bars or stage lines


@pytest.mark.parametrize("args, message", [
    (["--data", "lpc"], "--data lpc needs --sheets DIR"),
    (["--data", "lpc", "--sheets", "{tmp}/no-such-layers"], "does not exist"),
    (["--sheets", "{tmp}"], "--sheets only applies to --data lpc"),
    (["--minutes", "0"], "--minutes must be positive"),
    (["--judge", "{tmp}/missing.pt"], "judge .* does not exist"),
    (["--threads", "0"], "--threads must be a positive integer"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path, capsys):
    data = tmp_path / "absent" / "sprites.h5"
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main(["demo", "--config", "tiny", "--out", str(out), "--data-file", str(data), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("dsvae: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists() and not data.exists()  # nothing written


def test_unreadable_sheets_give_one_line(tmp_path, capsys):
    sheets = tmp_path / "layers"
    (sheets / "body").mkdir(parents=True)
    (sheets / "body" / "0.png").write_bytes(b"not a png")
    rc = main(["demo", "--data", "lpc", "--sheets", str(sheets), "--data-file", str(tmp_path / "s.h5"),
               "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dsvae: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_wrong_source_and_foreign_folders_are_refused(data_file, tmp_path):
    with pytest.raises(DsvaeError, match="holds 'procedural' data, not 'lpc'"):
        run_demo(out=tmp_path / "o", data="lpc", data_file=data_file, config="tiny", progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DsvaeError, match="not a dsvae demo folder"):
        run_demo(out=foreign, data_file=data_file, config="tiny", progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(DsvaeError, match="unknown demo config"):
        run_demo(out=tmp_path / "o", data_file=data_file, config="huge", progress=False)


def test_demo_builds_missing_procedural_data(tmp_path, monkeypatch, procedural_h5):
    """A missing data file is built (here: the build is replaced by a copy, to stay fast)."""
    import dsvae.data.procedural as procedural

    calls = []

    def fake_build(out, seed=0, overwrite=False, progress=True):
        calls.append(Path(out))
        shutil.copyfile(procedural_h5, out)
        return Path(out)

    monkeypatch.setattr(procedural, "build_procedural", fake_build)
    target = tmp_path / "fresh" / "procedural.h5"
    res = run_demo(out=tmp_path / "out", data_file=target, config="tiny", device="cpu", progress=False)
    assert calls == [target] and target.is_file()
    assert (res.out / "index.html").is_file()


def test_lpc_demo_on_the_real_layers(lpc_dir, tmp_path):
    target = tmp_path / "sprites.h5"
    res = run_demo(out=tmp_path / "out", data="lpc", sheets=lpc_dir, data_file=target, config="tiny",
                   device="cpu", progress=False)
    assert target.is_file()
    assert res.results["data"]["source"] == "lpc"
    assert all((res.out / name).is_file() for name in FILES)


def test_loss_plot(tmp_path):
    records = [{"step": s, "loss": 100.0 / s, "recon": 80.0 / s, "kl_f": 5.0, "kl_z": 0.0} for s in range(1, 50)]
    out = plot_loss_curve(records, tmp_path / "loss.png")
    with Image.open(out) as im:
        assert im.size == (800, 450)
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (90, 170, 255) in colours and (255, 150, 60) in colours  # the recon and kl_f lines are drawn
    single = plot_loss_curve([{"step": 1, "loss": 3.0}], tmp_path / "one.png")
    assert single.is_file()
    with pytest.raises(DsvaeError, match="already exists"):
        plot_loss_curve(records, out)
    with pytest.raises(DsvaeError, match="no loss values"):
        plot_loss_curve([{"step": 1, "acc": 0.5}], tmp_path / "none.png")


def test_demo_preset_builds_a_32px_model():
    model_cfg, train_cfg = get_preset("dsvae", "demo")
    model = build_model("dsvae", model_cfg)
    assert model.config.image_size == 32
    assert train_cfg["batch_size"] > 0 and (train_cfg.get("epochs") or train_cfg.get("max_steps"))
