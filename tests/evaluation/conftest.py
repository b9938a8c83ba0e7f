"""Fixtures of the evaluation tests: a tiny judge trained once per session on the procedural set."""

from __future__ import annotations

import pytest

from dsvae.evaluation.judge import judge_config, train_judge

#: 16x16 judge: seconds to train on 2 CPU cores, accurate on the procedural test split.
TINY_JUDGE = dict(config=judge_config("tiny", widths=(16, 32)), epochs=8, batch_size=64, lr=2e-3, seed=0,
                  progress=False)


@pytest.fixture(scope="session")
def tiny_judge(procedural_h5, tmp_path_factory):
    """(JudgeResult, data path) of a tiny judge trained on the whole procedural train split."""
    out = tmp_path_factory.mktemp("judge") / "judge.pt"
    return train_judge(procedural_h5, out, **TINY_JUDGE)
