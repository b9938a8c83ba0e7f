"""Smoke test of scripts/gpu_time_to_quality.sh (the prepared GPU time-to-quality check) at tiny scale on
the CPU: it runs the pipeline with its arguments overridden by the caller's and copies the results out."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_time_to_quality.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
                "WORK": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=600)


def test_the_gpu_check_runs_the_pipeline_and_copies_its_results(procedural_h5, tiny_judge, tmp_path):
    done = _run(tmp_path, "--data", "procedural", "--data-file", str(procedural_h5), "--judge", str(tiny_judge.path),
                "--preset", "tiny", "--max-steps", "2", "--eval-limit", "18", "--repeats", "1",
                REQUIRE_CUDA="0", MINUTES="1")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.json", "RESULTS.md", "env.txt", "metrics.jsonl",
                                                     "smoke.log"]
    env = (out / "env.txt").read_text()
    assert f"torch {torch.__version__}" in env and "minutes 1;" in env and "pipeline exit status 0" in env
    # the smoke run came first: 20 steps without the motion mix, 45 videos, then the main run
    assert "smoke run passed" in env and env.index("smoke run passed") < env.index("pipeline exit status")
    smoke = json.loads((tmp_path / "work" / "smoke" / "RESULTS.json").read_text())["variants"][0]
    assert smoke["training"]["steps"] == 20 and smoke["n_videos"] == 45 and smoke["training"]["mix"] == "none"
    report = json.loads((out / "RESULTS.json").read_text())["variants"][0]
    assert report["training"]["model"] == "cdsvae" and report["training"]["preset"] == "tiny"  # the caller's arguments won
    assert report["training"]["steps"] == 2 and report["training"]["minutes_budget"] == 1
    assert report["training"]["data"].endswith("train_mixed_colours.h5")  # colour-paired mixing, no labels
    assert report["n_videos"] == 18 and report["dynamic"]["status"] == "ok"
    assert [p["step"] for p in report["curve"]] == [2] and report["curve"][0]["n_videos"] == 900  # the time curve


def test_a_failed_smoke_run_stops_before_the_main_run(tmp_path):
    done = _run(tmp_path, "--data", "procedural", "--variants", "no-such-variant", REQUIRE_CUDA="0", MINUTES="1")
    assert done.returncode == 3 and "smoke run failed" in done.stderr and "no-such-variant" in done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "smoke.log"]
    assert "pipeline exit status" not in (out / "env.txt").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_it_stops_with_a_clear_message_and_runs_nothing(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "REQUIRE_CUDA=0" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
