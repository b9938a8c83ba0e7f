"""The README is code too: its commands and its Python example must run as written."""

import re
import shlex
from pathlib import Path

import imageio.v3 as iio
import pytest

from dsvae.cli import main
from dsvae.training.trainer import train

README = Path(__file__).resolve().parents[1] / "README.md"


def readme() -> str:
    return README.read_text()


def test_first_lines_are_the_fresh_machine_commands():
    block = readme().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(block) == 2
    main_job, tests = block
    assert main_job.endswith("# main job") and "pip install -e ." in main_job and "dsvae demo" in main_job
    assert tests.endswith("# tests") and 'pip install -e ".[test]"' in tests and "pytest" in tests


def test_every_referenced_command_exists():
    commands = set(re.findall(r"`dsvae ([a-z-]+(?: (?:train|test|build|info|preview|mix))?)", readme()))
    assert {"demo", "train", "eval", "swap", "sample", "interpolate", "judge train", "bench"} <= commands
    for command in sorted(commands):
        with pytest.raises(SystemExit) as exc:
            main([*shlex.split(command), "--help"])
        assert exc.value.code == 0, command


def test_python_example_runs(tmp_path, procedural_h5, monkeypatch):
    code = readme().split("```python\n", 1)[1].split("```", 1)[0]
    run = tmp_path / "run"
    train(data=str(procedural_h5), out=str(run), preset="tiny", max_steps=5, limit=40, batch_size=8,
          sample_every=0, progress=False)
    code = code.replace('"demo/run"', repr(str(run))).replace('"data/procedural.h5"', repr(str(procedural_h5)))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["recoloured"].shape == scope["x"].shape
    assert iio.improps(tmp_path / "mine.gif", index=None).shape[0] == scope["x"].shape[1]
    assert (tmp_path / "swap.gif").stat().st_size > 0
