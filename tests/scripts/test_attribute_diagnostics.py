"""Smoke test of scripts/attribute_diagnostics.py on a tiny run of the procedural set."""

import json

from dsvae.training.trainer import train


def test_script_writes_table_and_json(procedural_h5, tiny_judge, tmp_path, capsys, load_script):
    script = load_script("attribute_diagnostics")
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), preset="tiny", max_steps=2, limit=32,
                batch_size=8, sample_every=0, progress=False).run_dir
    out = tmp_path / "diag.json"
    args = ["--run", str(run), "--judge", str(tiny_judge.path), "--data", str(procedural_h5), "--out", str(out),
            "--n-train", "60", "--n-test", "30", "--batch-size", "30", "--quiet"]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    assert "| body |" in printed and "linear probe on f" in printed and "f + prior z" in printed
    result = json.loads(out.read_text())
    assert result["n_test"] == 30 and set(result["attributes"]) == {"body", "bottom", "top", "hair"}
    assert result["not_applicable"] == {}
    for r in result["attributes"].values():
        assert 0.0 <= r["probe"]["accuracy"] <= 1.0
        for source in ("reconstruction", "swap", "prior"):
            assert sum(map(sum, r[source]["confusion"])) == 30
    # user mistakes are one-line errors, not tracebacks
    assert script.main(["--run", str(tmp_path / "nope"), "--judge", str(tiny_judge.path),
                        "--data", str(procedural_h5), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    assert script.main(args[:-1] + ["--n-test", "0", "--quiet"]) == 2


def test_confusion_summary(load_script):
    confusions = load_script("attribute_diagnostics").confusions
    assert confusions([[5, 2, 0], [0, 3, 1], [0, 0, 4]]) == "0->1 (2/7), 1->2 (1/4)"
    assert confusions([[1, 0], [0, 1]]) == "none"
