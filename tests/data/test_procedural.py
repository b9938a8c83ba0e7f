import itertools
import time

import h5py
import numpy as np
import pytest

from dsvae.data import procedural as P
from dsvae.data import schema
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError

ALL_COMBOS = list(itertools.product(range(6), repeat=4))


@pytest.fixture(scope="module")
def seed1(tmp_path_factory):
    """The full data set made with seed 1 (seed 0 is the session's ``procedural_h5``), and its build time."""
    path = tmp_path_factory.mktemp("procedural_seed1") / "seed1.h5"
    start = time.perf_counter()
    out = P.build_procedural(path, seed=1, progress=False)
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def arrays(procedural_h5):
    with h5py.File(procedural_h5, "r") as f:
        return {s: {k: f[s][k][:] for k in ("actions", "attributes", "characters")} for s in schema.SPLITS}


def _owned(labels, factor):
    return np.isin(labels, P.FACTOR_LABELS[factor])


def test_build_is_fast_enough(seed1):
    path, seconds = seed1
    assert path.exists()
    assert seconds < 60  # loose on purpose: a few seconds on a laptop


def test_render_shapes_and_dtype():
    one = P.render_character((0, 1, 2, 3), 4)
    assert one.shape == (8, 64, 64, 3) and one.dtype == np.uint8
    every = P.render_character((0, 1, 2, 3))
    assert every.shape == (9, 8, 64, 64, 3)
    assert np.array_equal(every[4], one)
    batch = P.render_characters([[0, 1, 2, 3], [5, 4, 3, 2]])
    assert batch.shape == (2, 9, 8, 64, 64, 3)
    assert np.array_equal(batch[0], every)
    seqs = P.render_sequences([[0, 1, 2, 3], [5, 4, 3, 2]], [4, 7])
    assert np.array_equal(seqs[0], one) and np.array_equal(seqs[1], batch[1, 7])
    # black background, character about 40 pixels tall, roughly centred
    drawn = one.any(-1).any(0)
    ys, xs = np.nonzero(drawn)
    assert one[:, 0, 0].max() == 0
    assert 30 <= ys.max() - ys.min() + 1 <= 45
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 3


def test_bad_arguments():
    with pytest.raises(ValueError):
        P.render_character((0, 1, 2, 6), 0)
    with pytest.raises(ValueError):
        P.render_character((0, 1, 2), 0)
    with pytest.raises(ValueError):
        P.render_character((0, 1, 2, 3), 9)


def test_rendering_is_deterministic():
    rows = np.array([[0, 0, 0, 0], [3, 1, 4, 1], [5, 5, 5, 5]])
    assert np.array_equal(P.render_characters(rows), P.render_characters(rows))


def test_file_schema_and_splits(procedural_h5, arrays):
    with schema.open_h5(procedural_h5) as f:
        assert f.attrs["source"] == "procedural"
        assert f.attrs["format"] == schema.FORMAT
        for name in schema.FACTORS:
            values = [str(v) for v in f.attrs[f"factor_values_{name}"]]
            assert len(values) == 6 and len(set(values)) == 6
        assert list(f.attrs["factor_values_top"])[0] == "red tee"
        assert f["train/videos"].shape == (9000, 8, 64, 64, 3)
        assert f["test/videos"].shape == (2664, 8, 64, 64, 3)
        assert f["train/videos"].dtype == np.uint8
    train, test = arrays["train"], arrays["test"]
    assert len(set(train["characters"])) == 1000 and len(set(test["characters"])) == 296
    assert not set(train["characters"]) & set(test["characters"])
    assert set(train["characters"]) | set(test["characters"]) == set(range(1296))
    perm = np.random.RandomState(0).permutation(1296)
    for split, ids in (("train", perm[:1000]), ("test", perm[1000:])):
        expect = schema.sequence_labels(ids)
        a = arrays[split]
        assert np.array_equal(a["characters"], expect.characters)
        assert np.array_equal(a["actions"], expect.actions)
        assert np.array_equal(a["attributes"], expect.attributes)
        assert np.array_equal(schema.character_id(a["attributes"]), a["characters"])


def test_labels_cover_every_value(arrays):
    for split in schema.SPLITS:
        a = arrays[split]
        assert a["actions"].min() == 0 and a["actions"].max() == 8
        assert set(a["actions"]) == set(range(9))
        assert a["attributes"].min() == 0 and a["attributes"].max() == 5
        for k in range(4):
            assert set(a["attributes"][:, k]) == set(range(6))


def test_file_pixels_match_the_renderer_and_the_loader(procedural_h5, arrays):
    path = procedural_h5
    rows = [0, 13, 8999]
    with h5py.File(path, "r") as f:
        stored = f["train/videos"][rows]
    a = arrays["train"]
    expect = P.render_sequences(a["attributes"][rows], a["actions"][rows])
    assert np.array_equal(stored, expect)
    ds = SpritesDataset(path, "test", resident=False)
    item = ds[5]
    assert item["x"].shape == (8, 3, 64, 64)
    att, act = arrays["test"]["attributes"][5], arrays["test"]["actions"][5]
    assert np.allclose(item["x"].numpy(), P.render_character(att, act).transpose(0, 3, 1, 2) / 255.0)
    ds.close()


def test_other_seed_other_split_same_pixels(procedural_h5, seed1, arrays):
    with h5py.File(seed1[0], "r") as f:
        chars1 = f["train/characters"][:]
        assert int(f.attrs["source_seed"]) == 1
        cid = int(chars1[0])
        video1 = f["train/videos"][0]
        action1 = int(f["train/actions"][0])
    assert set(chars1) != set(arrays["train"]["characters"])
    # pixels do not depend on the seed: the same character and motion is stored identically
    pos = np.nonzero((arrays["train"]["characters"] == cid) & (arrays["train"]["actions"] == action1))[0]
    split = "train"
    if not len(pos):
        split = "test"
        pos = np.nonzero((arrays["test"]["characters"] == cid) & (arrays["test"]["actions"] == action1))[0]
    with h5py.File(procedural_h5, "r") as f:
        assert np.array_equal(f[f"{split}/videos"][int(pos[0])], video1)


def test_existing_output_refused(tmp_path):
    out = tmp_path / "d.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(DsvaeError, match="already exists"):
        P.build_procedural(out, progress=False)
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("factor", range(4))
def test_changing_one_factor_changes_only_its_parts(factor):
    rng = np.random.default_rng(factor)
    name = schema.FACTORS[factor]
    for _ in range(5):
        a = rng.integers(0, 6, 4)
        b = a.copy()
        b[factor] = (a[factor] + rng.integers(1, 6)) % 6
        va, vb = P.render_character(a), P.render_character(b)
        la, lb = P.render_labels(a), P.render_labels(b)
        changed = (va != vb).any(-1)
        assert changed.any(), (a, b)
        # every changed pixel shows this factor's part in one of the two characters
        assert not (changed & ~(_owned(la, name) | _owned(lb, name))).any(), (a, b)
        # the other factors' parts keep their colours
        for other in schema.FACTORS:
            if other != name:
                both = _owned(la, other) & _owned(lb, other)
                assert np.array_equal(va[both], vb[both])


def test_changing_hair_keeps_legs_and_pants():
    a, b = (1, 0, 0, 0), (1, 0, 0, 2)  # short hair -> long hair
    va, vb = P.render_character(a), P.render_character(b)
    la = P.render_labels(a)
    legs = np.isin(la, (P.PANTS, P.PANTS_SHADE, P.SHOE, P.SHOE_SHADE))
    assert legs.any()
    assert np.array_equal(va[legs], vb[legs])
    assert not np.array_equal(va, vb)


def test_changing_pants_colour_changes_exactly_the_pants():
    a, b = (2, 0, 3, 1), (2, 1, 3, 1)  # blue jeans -> grey trousers, the same cut
    va, vb = P.render_character(a), P.render_character(b)
    la, lb = P.render_labels(a), P.render_labels(b)
    assert np.array_equal(la, lb)
    changed = (va != vb).any(-1)
    assert np.array_equal(changed, _owned(la, "bottom"))
    pants = la == P.PANTS
    assert (va[pants] == P.BOTTOM_COLOURS[0]).all() and (vb[pants] == P.BOTTOM_COLOURS[1]).all()


def test_part_colours_follow_the_attributes():
    for attrs in [(0, 1, 2, 3), (4, 5, 0, 1), (5, 2, 4, 4), (3, 3, 5, 5)]:
        b, p, t, h = attrs
        v, lab = P.render_character(attrs), P.render_labels(attrs)
        for label, colour in ((P.SKIN, P.BODY_COLOURS[b]), (P.PANTS, P.BOTTOM_COLOURS[p]),
                              (P.TOP, P.TOP_COLOURS[t]), (P.HAIR, P.HAIR_COLOURS[h]), (P.BG, (0, 0, 0))):
            assert (v[lab == label] == colour).all()


def test_static_colours_in_every_frame():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, (12, 4))
    rows[:6] = np.arange(6)[:, None]  # every value of every factor at least once
    videos = P.render_characters(rows)
    for row, video in zip(rows, videos):
        b, p, t, h = row
        for colour in (P.BODY_COLOURS[b], P.BOTTOM_COLOURS[p], P.TOP_COLOURS[t], P.HAIR_COLOURS[h]):
            present = (video == colour).all(-1).any(axis=(-1, -2))  # (9 motions, 8 frames)
            assert present.all(), (row, colour)


def test_factor_colours_do_not_collide():
    colours = [(f, v, c) for f, cs in P.factor_colours().items() for v, c in enumerate(cs)]
    for (fa, va, ca), (fb, vb, cb) in itertools.combinations(colours, 2):
        d = np.linalg.norm(np.subtract(ca, cb, dtype=float))
        assert d >= (50 if fa != fb else 40), (fa, va, fb, vb)


def test_every_value_has_a_distinct_look():
    # hair and top values all differ in shape or pattern (their colours differ too)
    for factor, k in (("hair", 3), ("top", 2)):
        masks = []
        for v in range(6):
            attrs = [0, 0, 0, 0]
            attrs[k] = v
            lab = P.render_labels(attrs, 0)
            masks.append(np.where(_owned(lab, factor), lab, 0))  # the factor's parts, by part
        for i, j in itertools.combinations(range(6), 2):
            assert not np.array_equal(masks[i], masks[j]), (factor, i, j)


def test_motions_differ_and_frames_change():
    video = P.render_character((2, 3, 1, 4))
    for i, j in itertools.combinations(range(9), 2):
        diff = (video[i] != video[j]).any(-1).mean()
        assert diff > 0.005, (schema.MOTIONS[i], schema.MOTIONS[j])
    for m in range(9):
        frames = {f.tobytes() for f in video[m]}
        assert len(frames) >= 6, schema.MOTIONS[m]
        for t in range(7):
            assert not np.array_equal(video[m, t], video[m, t + 1]), (schema.MOTIONS[m], t)
    # facing right is the mirror image of facing left
    for action in range(3):
        left, right = schema.motion_label(action, 1), schema.motion_label(action, 2)
        assert np.array_equal(video[right], video[left][:, :, ::-1])


def test_motion_is_the_same_for_every_character():
    # props and eyes (drawn the same for everybody) sit at the same pixels for every style
    fixed = (P.EYE, P.BLADE, P.HILT, P.GLOW, P.GLOW_CORE)
    reference = np.isin(P.render_labels((0, 0, 0, 0)), fixed)
    for attrs in [(5, 5, 5, 5), (1, 2, 3, 4), (4, 3, 2, 1), (5, 4, 4, 2)]:
        assert np.array_equal(np.isin(P.render_labels(attrs), fixed), reference), attrs
    # and the colours do not change over time: a walk shows the same colours in every frame
    video = P.render_character((5, 4, 4, 2), 0)
    sets = [set(map(tuple, f.reshape(-1, 3))) for f in video]
    assert all(s == sets[0] for s in sets)
