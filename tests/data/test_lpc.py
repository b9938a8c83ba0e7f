"""The real Sprites builder: exact PIL composition, labels, split, and clear errors on bad inputs."""

import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from dsvae.cli import main
from dsvae.data import lpc, schema
from dsvae.errors import DsvaeError

N_TRAIN_SEQ, N_TEST_SEQ = 9000, 2664


# ---------------------------------------------------------------- helpers and fixtures


def _pil_character(lpc_dir, attributes) -> np.ndarray:
    """Straightforward reference: PIL alpha_composite of whole sheets over opaque black; (1344, 832, 3)."""
    canvas = Image.new("RGBA", lpc.SHEET_SIZE, (0, 0, 0, 255))
    layers = [(lpc.FACTOR_LAYERS[f], int(v)) for f, v in zip(schema.FACTORS, attributes)] + [lpc.SHOES]
    for layer, value in layers:
        with Image.open(lpc_dir / layer / f"{value}.png") as im:
            canvas = Image.alpha_composite(canvas, im.convert("RGBA"))
    return np.asarray(canvas)[..., :3]


def _sheet_sequence(sheet: np.ndarray, motion: int) -> np.ndarray:
    """The 8 documented cells of ``motion`` cut from a whole (1344, 832, C) sheet."""
    action, direction = schema.ACTIONS[motion // 3], schema.DIRECTIONS[motion % 3]
    row = {"walk": 8, "spellcast": 0, "slash": 12}[action] + {"left": 1, "front": 2, "right": 3}[direction]
    cols = {"walk": [8, 1, 2, 3, 4, 5, 6, 7], "spellcast": [0, 1, 2, 3, 4, 5, 4, 6],
            "slash": [0, 1, 2, 3, 4, 5, 4, 0]}[action]
    return np.stack([sheet[row * 64:(row + 1) * 64, c * 64:(c + 1) * 64] for c in cols])


def _alpha(lpc_dir, layer, value) -> np.ndarray:
    with Image.open(lpc_dir / layer / f"{value}.png") as im:
        return np.asarray(im.convert("RGBA"))[..., 3]


@pytest.fixture(scope="session")
def lpc_h5(lpc_dir, tmp_path_factory):
    """The full real Sprites set, built once per session (checked against the shipped checksums)."""
    path = tmp_path_factory.mktemp("lpc") / "sprites.h5"
    assert lpc.build_lpc(lpc_dir, path, checksums=lpc_dir / "SHA256SUMS", progress=False) == path
    return path


@pytest.fixture(scope="session")
def lpc_file(lpc_h5):
    with h5py.File(lpc_h5, "r") as f:
        yield f


@pytest.fixture
def layers_copy(lpc_dir, tmp_path):
    """A private copy of the needed layers and their checksums (never modify the shared folder)."""
    dst = tmp_path / "layers"
    for layer, value in lpc.NEEDED_LAYERS:
        (dst / layer).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lpc_dir / layer / f"{value}.png", dst / layer / f"{value}.png")
    shutil.copyfile(lpc_dir / "SHA256SUMS", dst / "SHA256SUMS")
    return dst


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _build_fails(sheets, out_dir, match, **kw):
    out = out_dir / "sprites.h5"
    with pytest.raises(DsvaeError, match=match) as info:
        lpc.build_lpc(sheets, out, progress=False, **kw)
    assert "\n" not in str(info.value)
    assert list(out_dir.iterdir()) == []  # nothing left behind, not even a temporary file
    return str(info.value)


# ---------------------------------------------------------------- exact composition


def test_blend_matches_pil_exhaustively():
    # every (source colour, alpha, destination colour) in the red channel, random green and blue;
    # in four slabs of source colours to keep memory small
    rng = np.random.default_rng(0)
    for lo in range(0, 256, 64):
        s, a, d = (x.reshape(2048, 2048) for x in np.meshgrid(
            np.arange(lo, lo + 64, dtype=np.uint8), *[np.arange(256, dtype=np.uint8)] * 2, indexing="ij"))
        src = rng.integers(0, 256, (2048, 2048, 4), dtype=np.uint8)
        src[..., 0], src[..., 3] = s, a
        dst = rng.integers(0, 256, (2048, 2048, 4), dtype=np.uint8)
        dst[..., 0], dst[..., 3] = d, 255
        ref = np.asarray(Image.alpha_composite(Image.fromarray(dst, "RGBA"), Image.fromarray(src, "RGBA")))
        assert (ref[..., 3] == 255).all()
        assert np.array_equal(lpc.blend_over_opaque(src[..., :1], src[..., 3:], dst[..., :1]), ref[..., :1])
        part = slice(0, 256)
        got = lpc.blend_over_opaque(src[part, ..., :3], src[part, ..., 3:], dst[part, ..., :3])
        assert got.dtype == np.uint8 and np.array_equal(got, ref[part, ..., :3])


def _pil_over(dst_rgb, src_rgba):
    dst = np.concatenate([dst_rgb, np.full(dst_rgb.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    return np.asarray(Image.alpha_composite(Image.fromarray(dst, "RGBA"), Image.fromarray(src_rgba, "RGBA")))[..., :3]


def test_sparse_layers_match_pil_on_real_layers(lpc_dir):
    _, frames, _ = lpc._read_layers(lpc_dir, lpc_dir / "SHA256SUMS")
    rng = np.random.default_rng(1)
    partial = 0
    for key, rgba in frames.items():
        assert rgba.shape == (72, 64, 64, 4)
        flat_rgba = np.ascontiguousarray(rgba.reshape(72 * 64, 64, 4))
        for dst in (np.zeros((72 * 64, 64, 3), np.uint8), rng.integers(0, 256, (72 * 64, 64, 3), dtype=np.uint8)):
            ref = _pil_over(dst, flat_rgba)
            assert np.array_equal(lpc.blend_over_opaque(flat_rgba[..., :3], flat_rgba[..., 3:], dst), ref), key
            layer = lpc._SparseLayer.from_rgba(rgba)
            partial += layer.part_idx.size
            got = dst.reshape(-1, 3).copy()
            layer.apply(got)
            assert np.array_equal(got.reshape(dst.shape), ref), key
    assert partial > 0  # the real layers do have semi-transparent pixels, so that path is exercised


def test_motion_cells_follow_the_sheet_layout():
    cells, frame_map = lpc.motion_cells()
    assert len(cells) == len(set(cells)) == 63
    assert frame_map.shape == (9, 8)
    seq = lambda m: [cells[i] for i in frame_map[m]]  # noqa: E731
    assert seq(schema.motion_label(0, 0)) == [(10, c) for c in (8, 1, 2, 3, 4, 5, 6, 7)]  # walk front
    assert seq(schema.motion_label(0, 1)) == [(9, c) for c in (8, 1, 2, 3, 4, 5, 6, 7)]  # walk left
    assert seq(schema.motion_label(0, 2)) == [(11, c) for c in (8, 1, 2, 3, 4, 5, 6, 7)]  # walk right
    assert seq(schema.motion_label(1, 1)) == [(1, c) for c in (0, 1, 2, 3, 4, 5, 4, 6)]  # spellcast left
    assert seq(schema.motion_label(2, 2)) == [(15, c) for c in (0, 1, 2, 3, 4, 5, 4, 0)]  # slash right


# ---------------------------------------------------------------- the built file


def test_split_sizes_and_labels(lpc_file):
    train_ids, test_ids = schema.standard_split()
    f = lpc_file
    assert f["train/videos"].shape == (N_TRAIN_SEQ, 8, 64, 64, 3)
    assert f["test/videos"].shape == (N_TEST_SEQ, 8, 64, 64, 3)
    assert f["train/videos"].dtype == np.uint8 and f["train/videos"].chunks == (1, 8, 64, 64, 3)
    chars = {s: f[f"{s}/characters"][:] for s in schema.SPLITS}
    assert np.array_equal(chars["train"], np.repeat(train_ids, 9))
    assert np.array_equal(chars["test"], np.repeat(test_ids, 9))
    assert not set(chars["train"]) & set(chars["test"])
    for split in schema.SPLITS:
        actions, attrs = f[f"{split}/actions"][:], f[f"{split}/attributes"][:]
        assert actions.min() == 0 and actions.max() == 8
        assert np.array_equal(np.unique(actions), np.arange(9))
        assert attrs.min() == 0 and attrs.max() == 5
        for k in range(4):
            assert np.array_equal(np.unique(attrs[:, k]), np.arange(6)), (split, k)
        assert np.array_equal(schema.character_id(attrs), chars[split])
        assert np.array_equal(actions, np.tile(np.arange(9), len(actions) // 9))
    assert f.attrs["source"] == "lpc" and f.attrs["format"] == schema.FORMAT
    assert [len(f.attrs[f"factor_values_{x}"]) for x in schema.FACTORS] == [6, 6, 6, 6]


def test_pixels_equal_direct_pil_composition(lpc_file, lpc_dir):
    rows = {"train": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4321], "test": [9 * 17 + 4, N_TEST_SEQ - 1]}
    for split, idx in rows.items():
        g = lpc_file[split]
        for i in idx:
            sheet = _pil_character(lpc_dir, g["attributes"][i])
            assert np.array_equal(g["videos"][i], _sheet_sequence(sheet, int(g["actions"][i]))), (split, i)
    assert lpc_file["train/videos"][0].max() > 0


def _locate(f):
    where = {}
    for split in schema.SPLITS:
        for row, (cid, m) in enumerate(zip(f[f"{split}/characters"][:], f[f"{split}/actions"][:])):
            where[(int(cid), int(m))] = (split, row)
    return where


@pytest.mark.parametrize("factor,old,new,motion", [("hair", 0, 3, 0), ("top", 1, 4, 7), ("body", 2, 5, 3)])
def test_changing_one_attribute_changes_only_its_pixels(lpc_file, lpc_dir, factor, old, new, motion):
    where = _locate(lpc_file)
    k = schema.FACTORS.index(factor)
    base = np.array([1, 2, 3, 4])
    a, b = base.copy(), base.copy()
    a[k], b[k] = old, new
    va, vb = (lpc_file[split]["videos"][row]
              for split, row in (where[(int(schema.character_id(x)), motion)] for x in (a, b)))
    changed = (va != vb).any(-1)
    layer = lpc.FACTOR_LAYERS[factor]
    covered = (_sheet_sequence(_alpha(lpc_dir, layer, old)[..., None], motion)[..., 0] > 0) | (
        _sheet_sequence(_alpha(lpc_dir, layer, new)[..., None], motion)[..., 0] > 0
    )
    assert changed.any()
    assert not (changed & ~covered).any()


# ---------------------------------------------------------------- inputs and errors


def test_verify_layers_returns_every_needed_file(lpc_dir):
    paths = lpc.verify_layers(lpc_dir, checksums=lpc_dir / "SHA256SUMS")
    assert set(paths) == set(lpc.NEEDED_LAYERS) and len(paths) == 25
    assert paths[("shoes", 1)] == lpc_dir / "shoes" / "1.png"
    assert all(p.is_file() for p in paths.values())


def test_embedded_checksums_match_the_shared_layers(lpc_dir):
    shared = lpc.parse_checksums((lpc_dir / "SHA256SUMS").read_text())
    embedded = lpc.embedded_checksums()
    for key in lpc.NEEDED_LAYERS:
        assert embedded[lpc.layer_file(*key)] == shared[lpc.layer_file(*key)]


def test_missing_layer(layers_copy, out_dir):
    (layers_copy / "hair" / "4.png").unlink()
    msg = _build_fails(layers_copy, out_dir, "missing")
    assert "hair/4.png" in msg
    with pytest.raises(DsvaeError, match="hair/4.png"):
        lpc.verify_layers(layers_copy)


def test_missing_folder(tmp_path, out_dir):
    _build_fails(tmp_path / "nowhere", out_dir, "does not exist")
    (tmp_path / "empty").mkdir()
    _build_fails(tmp_path / "empty", out_dir, "none of the LPC layers")


def test_wrong_size(layers_copy, out_dir):
    Image.new("RGBA", (100, 100)).save(layers_copy / "topwear" / "2.png")
    msg = _build_fails(layers_copy, out_dir, "100x100")
    assert "topwear/2.png" in msg


def test_corrupt_png(layers_copy, out_dir):
    path = layers_copy / "bottomwear" / "3.png"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    msg = _build_fails(layers_copy, out_dir, "not a readable image")
    assert "bottomwear/3.png" in msg
    path.write_bytes(path.read_bytes()[:20])
    assert "bottomwear/3.png" in _build_fails(layers_copy, out_dir, "not a readable image")


def test_checksum_mismatch(layers_copy, out_dir):
    # a valid image of the right size, but not the upstream file
    path = layers_copy / "body" / "1.png"
    with Image.open(path) as im:
        im.convert("RGBA").save(path)
    msg = _build_fails(layers_copy, out_dir, "SHA-256", checksums=layers_copy / "SHA256SUMS")
    assert "body/1.png" in msg
    with pytest.raises(DsvaeError, match="body/1.png"):
        lpc.verify_layers(layers_copy, checksums=layers_copy / "SHA256SUMS")
    lpc.verify_layers(layers_copy)  # without checksums the re-encoded file is acceptable


def test_bad_checksum_files(layers_copy, out_dir):
    _build_fails(layers_copy, out_dir, "does not exist", checksums=layers_copy / "NOPE")
    bad = layers_copy / "BAD"
    bad.write_text("not a checksum line\n")
    _build_fails(layers_copy, out_dir, "line 1", checksums=bad)
    partial = layers_copy / "PARTIAL"
    lines = (layers_copy / "SHA256SUMS").read_text().splitlines(True)
    partial.write_text("".join(line for line in lines if "hair/5" not in line))
    _build_fails(layers_copy, out_dir, "no entry for hair/5.png", checksums=partial)


def test_existing_and_unwritable_output(lpc_dir, out_dir, tmp_path):
    out = out_dir / "sprites.h5"
    out.write_bytes(b"precious")
    with pytest.raises(DsvaeError, match="already exists"):
        lpc.build_lpc(lpc_dir, out, progress=False)
    assert out.read_bytes() == b"precious" and list(out_dir.iterdir()) == [out]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DsvaeError, match="a_file"):
        lpc.build_lpc(lpc_dir, blocker / "sprites.h5", progress=False)
    assert blocker.read_text() == "x"


def test_cli_errors_and_success(lpc_dir, layers_copy, out_dir, lpc_h5, capsys):
    out = out_dir / "sprites.h5"
    (layers_copy / "shoes" / "1.png").unlink()
    args = ["data", "build", "--source", "lpc", "--out", str(out), "--quiet"]
    assert main(args + ["--sheets", str(layers_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsvae: error: ") and "shoes/1.png" in err[0]
    assert list(out_dir.iterdir()) == []

    out.write_bytes(b"old")
    assert main(args + ["--sheets", str(lpc_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--sheets", str(lpc_dir), "--checksums", str(lpc_dir / "SHA256SUMS"), "--overwrite"]) == 0
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in out_dir.iterdir()] == ["sprites.h5"]
    # deterministic: the CLI build is the same file content as the library build
    with h5py.File(out, "r") as a, h5py.File(lpc_h5, "r") as b:
        for split in schema.SPLITS:
            for key in ("actions", "attributes", "characters"):
                assert np.array_equal(a[f"{split}/{key}"][:], b[f"{split}/{key}"][:])
            n = a[f"{split}/videos"].shape[0]
            for i in (0, n // 2, n - 1):
                assert a[f"{split}/videos"].id.read_direct_chunk((i, 0, 0, 0, 0)) == \
                    b[f"{split}/videos"].id.read_direct_chunk((i, 0, 0, 0, 0))
