"""Smoke test of scripts/action_certainty.py on a tiny run of the procedural set."""

import json

from dsvae.training.trainer import train


def test_script_writes_table_and_json(procedural_h5, tiny_judge, tmp_path, capsys, load_script):
    script = load_script("action_certainty")
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), preset="tiny", max_steps=2, limit=32,
                batch_size=8, sample_every=0, progress=False).run_dir
    out = tmp_path / "certainty.json"
    args = ["--run", str(run), "--judge", str(tiny_judge.path), "--data", str(procedural_h5), "--out", str(out),
            "--n-test", "45", "--batch-size", "20", "--scales", "0.8", "0.5", "--draws", "2", "--quiet"]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    assert "| real test videos (no decoding) |" in printed and "| prior x 0.5 |" in printed
    assert "Video or look (2 prior draws per video)" in printed and "| body |" in printed
    result = json.loads(out.read_text())
    assert result["n_test"] == 45 and result["not_applicable"] == {}
    assert result["doubt"]["draws"] == 2 and len(result["doubt"]["h_yx_per_draw"]) == 2
    assert list(result["sources"]) == ["real", "prior", "prior x 0.8", "prior x 0.5", "swap", "reconstruction"]
    for r in result["sources"].values():
        assert 0.0 <= r["action_accuracy"] <= 1.0 and 1.0 <= r["inception_score"] <= 9.0 + 1e-6
        assert 0.0 <= r["worst_1pct_share"] <= 1.0
    # user mistakes are one-line errors, not tracebacks
    assert script.main(["--run", str(tmp_path / "nope"), "--judge", str(tiny_judge.path),
                        "--data", str(procedural_h5), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    assert script.main(args[:-6] + ["--scales", "2", "--quiet"]) == 2
