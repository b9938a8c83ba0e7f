"""Oracle tests of the protocol: a perfect model scores perfectly, a model that ignores its codes scores chance."""

import json
import math
from dataclasses import dataclass

import pytest
import torch

from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.data.schema import N_MOTIONS
from dsvae.errors import NotApplicable
from dsvae.evaluation import protocol
from dsvae.evaluation.protocol import derangement, evaluate, select_videos
from dsvae.models.base import ModelConfig, Posterior, SequenceModel
from dsvae.training.trainer import train

SIZE = 16


@dataclass
class OracleConfig(ModelConfig):
    image_size: int = SIZE


class Oracle(SequenceModel):
    """A perfect model of the procedural test split: its codes ARE the labels.

    f = the four attributes (float), z_t = the motion (float, one per frame). ``decode`` looks up,
    frame by frame, the real test video of that character and motion; the priors draw uniformly
    random characters (of the test split) and motions. ``encode`` recognises a real video by its
    pixels and logs which split positions it saw in ``seen``.
    """

    model_type = "oracle"
    config_class = OracleConfig
    has_sequence_prior = True

    def __init__(self, ds: SpritesDataset) -> None:
        super().__init__()
        self.videos = ds.videos  # uint8 (N, T, 3, S, S)
        self.attributes, self.actions = ds.attributes, ds.actions
        self.chars = torch.unique(ds.attributes, dim=0)  # attribute rows of the test characters
        # split position of every (body, bottom, top, hair, motion) present in the split, else -1
        self.row = torch.full((6, 6, 6, 6, N_MOTIONS), -1, dtype=torch.long)
        self.row[(*ds.attributes.T, ds.actions)] = torch.arange(len(ds))
        self.by_pixels = {bytes(v.numpy().tobytes()): i for i, v in enumerate(ds.videos)}
        self.seen: list[int] = []

    def encode(self, x):
        rows = [self.by_pixels[bytes((v * 255).round().to(torch.uint8).numpy().tobytes())] for v in x]
        self.seen.extend(rows)
        f = self.attributes[rows].float()
        z = self.actions[rows].float()[:, None, None].expand(-1, x.shape[1], 1)
        return Posterior(f, None, f, z, None, z)

    def decode(self, f, z):
        attrs = f.round().long()[:, None, :].expand(-1, z.shape[1], -1)  # (B, T, 4)
        motions = z[..., 0].round().long()  # (B, T)
        rows = self.row[(*attrs.unbind(-1), motions)]
        assert bool((rows >= 0).all()), "the oracle was asked for a character that is not in the split"
        frames = torch.arange(z.shape[1]).expand_as(rows)
        return self.videos[rows, frames].float() / 255.0

    def sample_static(self, n):
        return self.chars[torch.randint(len(self.chars), (n,))].float()

    def sample_dynamics(self, n, steps, means=False):
        return torch.randint(N_MOTIONS, (n, 1, 1)).float().expand(n, steps, 1)


class Ignorant(Oracle):
    """Same codes and priors, but decodes the first test video whatever f and z say."""

    def decode(self, f, z):
        return (self.videos[:1].float() / 255.0).expand(f.shape[0], -1, -1, -1, -1)


class ImageBaseline(SequenceModel):
    """A per-frame model without priors (like the image-level baselines): sample_* raise NotApplicable."""

    model_type = "image-stub"
    config_class = OracleConfig

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        f = x.mean(dim=(1, 3, 4))
        z = x.mean(dim=(3, 4))
        return Posterior(f, None, f, z, None, z)

    def decode(self, f, z):
        colour = (0.5 * f[:, None, :] + 0.5 * z) * self.scale
        return colour[..., None, None].expand(-1, -1, -1, SIZE, SIZE).clamp(0, 1)


@pytest.fixture(scope="module")
def test_split(procedural_h5):
    return SpritesDataset(procedural_h5, "test", image_size=SIZE)


def test_oracle_scores_perfectly(test_split, tiny_judge, procedural_h5):
    oracle = Oracle(test_split)
    res = evaluate(oracle, tiny_judge.judge, procedural_h5, repeats=2, progress=False, batch_size=512)
    n = len(test_split)
    assert res["n_videos"] == n and oracle.seen == list(range(n))  # every test video, encoded once
    judge_acc = tiny_judge.test_accuracy
    dyn, sta, swp = res["dynamic"], res["static"], res["swap"]
    # what the codes control: ~100% (bounded by the judge's own accuracy)
    assert dyn["action_accuracy"]["mean"] >= judge_acc["action"] - 0.01
    assert sta["attribute_accuracy"]["mean"] >= 0.96
    assert swp["attribute_accuracy"]["mean"] >= 0.96 and swp["action_accuracy"]["mean"] >= 0.98
    for name, acc in judge_acc.items():
        if name != "action":
            assert sta["attributes"][name]["mean"] >= acc - 0.02
            assert swp["attributes"][name]["mean"] >= acc - 0.02
    # confidence: the oracle decodes real test videos, so its H(y|x) is the judge's own on real videos
    # (how sure a judge is depends on its training, so the bound is relative to it, not a fixed number)
    probs = tiny_judge.judge.predict(test_split.videos.float() / 255.0)["action"]
    h_real = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
    assert h_real < 0.3  # the tiny judge is sure of itself on real videos
    assert dyn["h_y"]["mean"] == pytest.approx(math.log(9), abs=0.01)
    assert dyn["h_yx"]["mean"] == pytest.approx(h_real, abs=0.03)
    assert dyn["inception_score"]["mean"] >= 9 * math.exp(-h_real - 0.03) - 0.1  # IS ~ exp(H(y) - H(y|x))
    assert dyn["balanced_videos"] == n  # the test split has every motion of every character
    # the judge on the real videos themselves: its own accuracy and confidence, one pass
    real = res["real"]
    assert real["action_accuracy"]["mean"] == pytest.approx(judge_acc["action"], abs=1e-9)
    for name, acc in judge_acc.items():
        if name != "action":
            assert real["attributes"][name]["mean"] == pytest.approx(acc, abs=1e-9)
    assert real["h_yx"]["mean"] == pytest.approx(h_real, abs=1e-4)
    assert len(real["h_yx"]["values"]) == 1
    # the oracle decodes real videos, so it reads exactly like them
    assert dyn["h_yx"]["mean"] == pytest.approx(real["h_yx"]["mean"], abs=0.03)
    assert res["markdown_real_row"].startswith("| real test videos (")
    assert res["markdown_real_row"].count("|") == res["markdown_row"].count("|")
    # what the codes should not control: chance
    assert sta["action_accuracy"]["mean"] == pytest.approx(1 / 9, abs=0.03)
    assert dyn["attribute_accuracy"]["mean"] == pytest.approx(1 / 6, abs=0.03)
    for stats in dyn["attributes"].values():
        assert stats["mean"] == pytest.approx(1 / 6, abs=0.06)
    # fresh draws per repeat, reported as mean/std
    assert len(dyn["action_accuracy"]["values"]) == 2
    assert sta["action_accuracy"]["values"][0] != sta["action_accuracy"]["values"][1]
    assert res["warnings"] == []


def test_model_ignoring_its_codes_scores_chance(test_split, tiny_judge, procedural_h5):
    res = evaluate(Ignorant(test_split), tiny_judge.judge, procedural_h5, repeats=1, progress=False)
    dyn, sta, swp = res["dynamic"], res["static"], res["swap"]
    oracle = evaluate(Oracle(test_split), tiny_judge.judge, procedural_h5, repeats=1, progress=False)
    assert res["real"] == oracle["real"]  # the real videos' row does not depend on the model
    # one fixed video: the judge always says the same thing
    assert dyn["action_accuracy"]["mean"] == pytest.approx(1 / 9, abs=1e-9)
    assert swp["action_accuracy"]["mean"] == pytest.approx(1 / 9, abs=1e-9)
    assert dyn["inception_score"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert dyn["h_y"]["mean"] == pytest.approx(dyn["h_yx"]["mean"], abs=1e-6)
    assert sta["attribute_accuracy"]["mean"] == pytest.approx(1 / 6, abs=0.06)
    assert swp["attribute_accuracy"]["mean"] == pytest.approx(1 / 6, abs=0.06)


def test_results_do_not_depend_on_batch_size(test_split, tiny_judge, procedural_h5):
    kw = dict(repeats=1, progress=False, limit=90, seed=3)
    a = evaluate(Oracle(test_split), tiny_judge.judge, procedural_h5, batch_size=7, **kw)
    b = evaluate(Oracle(test_split), tiny_judge.judge, procedural_h5, batch_size=90, **kw)
    for test in ("dynamic", "static", "swap"):
        assert a[test]["action_accuracy"] == b[test]["action_accuracy"]
        assert a[test]["attribute_accuracy"] == b[test]["attribute_accuracy"]
    c = evaluate(Oracle(test_split), tiny_judge.judge, procedural_h5, batch_size=90, **{**kw, "seed": 4})
    assert c["static"]["action_accuracy"] != a["static"]["action_accuracy"]


def test_selection_legacy_and_balanced_subset(test_split, tiny_judge, procedural_h5, monkeypatch):
    assert select_videos(2664).tolist() == list(range(2664))
    assert select_videos(2664, legacy=True).tolist() == list(range(2560))
    assert select_videos(300, legacy=True, limit=100).tolist() == list(range(100))
    assert select_videos(100, legacy=True).numel() == 0
    # the legacy run encodes exactly the first floor(N/128)*128 test videos, in file order
    oracle = Oracle(test_split)
    res = evaluate(oracle, tiny_judge.judge, procedural_h5, repeats=1, legacy=True, progress=False)
    n = (len(test_split) // 128) * 128
    assert res["legacy"] and res["n_videos"] == n and oracle.seen == list(range(n))

    # an unbalanced, shuffled selection: action 0 occurs once (position 27 of the split), the others 4 times
    gen = torch.Generator().manual_seed(0)
    picks = [i for i in range(36) if i not in (0, 9, 18)]
    picks = [picks[j] for j in torch.randperm(len(picks), generator=gen).tolist()]
    expected, taken = [], set()
    for pos, split_index in enumerate(picks):  # the first video of each action, in evaluation order
        action = split_index % N_MOTIONS
        if action not in taken:
            taken.add(action)
            expected.append(pos)
    captured = []
    real_scores = protocol.metrics.action_scores

    def spy(probs):
        captured.append(probs.argmax(-1))
        return real_scores(probs)

    monkeypatch.setattr(protocol.metrics, "action_scores", spy)
    oracle = Oracle(test_split)
    res = evaluate(oracle, tiny_judge.judge, procedural_h5, repeats=1, indices=picks, progress=False)
    assert oracle.seen == picks
    assert res["dynamic"]["balanced_per_class"] == 1 and res["dynamic"]["balanced_videos"] == 9
    # the judge (accurate) sees the motions of exactly the expected videos, one of each action
    assert captured[0].tolist() == [picks[p] % N_MOTIONS for p in sorted(expected)]


def test_derangement():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 10, 500):
        perm = derangement(n, gen)
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()


def test_not_applicable_for_models_without_priors(tmp_path, tiny_judge, procedural_h5):
    res = evaluate(ImageBaseline(), tiny_judge.judge, procedural_h5, repeats=2, limit=40, progress=False,
                   out=tmp_path / "r.json")
    for test in ("dynamic", "static"):
        assert res[test]["status"] == "not applicable" and "prior" in res[test]["reason"]
    assert res["swap"]["status"] == "ok"
    assert 0 <= res["swap"]["attribute_accuracy"]["mean"] <= 1
    assert res["markdown_row"].count("n/a") == 7
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["dynamic"]["status"] == "not applicable"
    with pytest.raises(NotApplicable):
        ImageBaseline().sample_static(2)


def _numbers(entry):
    for key, value in entry.items():
        if isinstance(value, dict) and "mean" in value:
            yield key, value
        elif key == "attributes":
            yield from _numbers(value)


def test_dsvae_run_end_to_end(tmp_path, tiny_judge, procedural_h5, capsys):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), preset="tiny", max_steps=3, limit=64,
                batch_size=8, sample_every=0, progress=False).run_dir
    res = evaluate(run, tiny_judge.path, procedural_h5, repeats=2, limit=60, progress=False)
    assert res["model"]["model_type"] == "dsvae" and res["model"]["step"] == 3
    for test in ("dynamic", "static", "swap"):
        for key, stats in _numbers(res[test]):
            if key in ("inception_score", "h_yx", "h_y"):
                continue
            assert 0 <= stats["mean"] <= 1 and stats["std"] >= 0 and len(stats["values"]) == 2
    assert 1 <= res["dynamic"]["inception_score"]["mean"] <= 9

    out = tmp_path / "RESULTS.json"
    argv = ["eval", "--run", str(run), "--judge", str(tiny_judge.path), "--data", str(procedural_h5),
            "--out", str(out), "--repeats", "2", "--limit", "60", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["markdown_row"] in text and saved["markdown_header"].splitlines()[0] in text
    assert saved["markdown_row"].startswith("| dsvae (run) | ")
    assert saved["markdown_real_row"] in text and "real videos (the judge's ceiling)" in text
    assert saved["real"]["status"] == "ok"
    assert saved["n_videos"] == 60 and saved["repeats"] == 2 and not saved["legacy"]
    assert saved["dynamic"]["action_accuracy"] == res["dynamic"]["action_accuracy"]  # seeded: same numbers
    assert saved["judge"]["data_source"] == "procedural" and saved["data"]["source"] == "procedural"
    assert saved["seconds"] > 0
    # an existing RESULTS.json is kept unless --overwrite
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_eval_cli_errors(tmp_path, tiny_judge, procedural_h5, capsys):
    data = str(procedural_h5)
    rc = main(["eval", "--run", str(tmp_path / "nope"), "--judge", str(tiny_judge.path), "--data", data])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dsvae: error: ") and err.count("\n") == 1
    rc = main(["eval", "--run", str(tiny_judge.path), "--judge", str(tiny_judge.path), "--data", data])
    err = capsys.readouterr().err
    assert rc == 2 and "judge" in err
