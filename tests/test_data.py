"""Data: deterministic shapes, train/val split, the fingerprinted cache, folders of real-world images, preview."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from t2ilab.config import DataConfig
from t2ilab.datasets import data, shapes
from t2ilab.datasets.data import DataError, DataWarning, load_dataset, split_indices

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def render_calls(monkeypatch) -> list[tuple]:
    """Wrap shapes.render_shapes_dataset to record each call."""
    calls: list[tuple] = []
    real = shapes.render_shapes_dataset

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes, "render_shapes_dataset", counting)
    return calls


def shapes_cfg(tmp_path: Path, **overrides) -> DataConfig:
    fields = {"num_samples": 12, "resolution": 16, "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache")}
    return DataConfig(**{**fields, **overrides})


def folder_cfg(path: Path, tmp_path: Path, **overrides) -> DataConfig:
    fields = {"source": "folder", "path": str(path), "resolution": 16, "cache_dir": str(tmp_path / "cache")}
    return DataConfig(**{**fields, **overrides})


def save_image(path: Path, image: Image.Image, caption: str | None = None, **save_args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- shapes and split -----------------------------------------------------------------------------------

def test_shapes_same_seed_is_byte_identical_and_another_seed_differs(tmp_path, render_calls):
    a = load_dataset(shapes_cfg(tmp_path, cache_dir=str(tmp_path / "c1")))
    b = load_dataset(shapes_cfg(tmp_path, cache_dir=str(tmp_path / "c2")))  # rendered again, not cached
    other = load_dataset(shapes_cfg(tmp_path, seed=1))
    assert len(render_calls) == 3
    assert a.images.dtype == torch.uint8 and a.images.shape == (12, 3, 16, 16)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.specs == b.specs
    assert a.fingerprint == b.fingerprint != other.fingerprint
    assert not torch.equal(a.images, other.images)
    assert a.source == "shapes" and a.skipped == {} and all("category" in s for s in a.specs)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 64, 101])
@pytest.mark.parametrize("val_fraction", [0.0, 0.01, 0.125, 0.49])
def test_split_is_disjoint_covers_everything_and_val_is_never_empty(n, val_fraction):
    train, val = split_indices(n, val_fraction, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(n))
    # The count is binomial now (each sample's side is its own hash), at least 1 when there is anything to hold out.
    if val_fraction == 0 or n < 2:
        assert len(val) == 0
    else:
        assert len(val) >= 1 and len(train) >= 1
        assert abs(len(val) - n * val_fraction) <= max(1, 4 * (n * val_fraction * (1 - val_fraction)) ** 0.5)
    again_train, again_val = split_indices(n, val_fraction, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)


def test_split_depends_on_the_seed():
    assert not np.array_equal(split_indices(100, 0.2, seed=0)[1], split_indices(100, 0.2, seed=1)[1])


def test_growing_shapes_500_to_1000_puts_no_trained_image_into_validation(tmp_path):
    small = load_dataset(shapes_cfg(tmp_path, num_samples=500, val_fraction=0.1))
    big = load_dataset(shapes_cfg(tmp_path, num_samples=1000, val_fraction=0.1))
    trained = {small.images[i].numpy().tobytes() for i in small.train_idx}
    held_big = {big.images[i].numpy().tobytes() for i in big.val_idx}
    assert len(trained) > 400 and not trained & held_big  # compared by image content, not by index
    assert {small.images[i].numpy().tobytes() for i in small.val_idx} <= held_big
    line = data.split_change(data.dataset_ids(small_cfg := shapes_cfg(tmp_path, num_samples=500), small.fingerprint),
                             big, 0.1, small_cfg.seed)
    added_val = len(big.val_idx) - len(small.val_idx)
    assert line.startswith(f"data split: +500 images ({500 - added_val} to train, {added_val} to val), -0")


def test_growing_a_folder_puts_no_trained_image_into_validation(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(60):
        save_image(root / f"img{i:03d}.png", Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)), caption=f"photo {i}")
    small = load_dataset(folder_cfg(root, tmp_path, val_fraction=0.2))
    for i in range(60, 120):
        save_image(root / f"a{i:03d}.png", Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)), caption=f"photo {i}")
    big = load_dataset(folder_cfg(root, tmp_path, val_fraction=0.2))
    assert big.fingerprint != small.fingerprint and len(big) == 120
    trained = {small.images[i].numpy().tobytes() for i in small.train_idx}
    assert not trained & {big.images[i].numpy().tobytes() for i in big.val_idx}
    old_ids = data.dataset_ids(folder_cfg(root, tmp_path, val_fraction=0.2), small.fingerprint)
    assert old_ids == small.ids
    assert data.split_change(old_ids, big, 0.2, 0).startswith("data split: +60 images (")


def test_to_model_range_maps_uint8_to_minus_one_one():
    out = data.to_model_range(torch.tensor([0, 255, 128], dtype=torch.uint8))
    assert out.dtype == torch.float32
    assert out[0] == -1.0 and out[1] == 1.0 and abs(out[2].item()) < 0.01


# --- cache ----------------------------------------------------------------------------------------------

def test_second_load_reads_the_cache_and_a_new_num_samples_renders_again(tmp_path, render_calls):
    first = load_dataset(shapes_cfg(tmp_path))
    second = load_dataset(shapes_cfg(tmp_path))
    assert len(render_calls) == 1
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.images, second.images) and first.captions == second.captions
    assert first.specs == second.specs
    assert np.array_equal(first.val_idx, second.val_idx)
    assert (tmp_path / "cache" / first.fingerprint / "images.safetensors").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp folders left

    load_dataset(shapes_cfg(tmp_path, num_samples=8))
    assert len(render_calls) == 2


def test_val_fraction_and_cache_dir_do_not_change_the_fingerprint(tmp_path, render_calls):
    base = data.data_fingerprint(shapes_cfg(tmp_path))
    assert data.data_fingerprint(shapes_cfg(tmp_path, val_fraction=0.1, cache_dir="elsewhere")) == base
    for change in ({"num_samples": 13}, {"resolution": 32}, {"seed": 1}, {"category_mix": {"counting": 1.0}}):
        assert data.data_fingerprint(shapes_cfg(tmp_path, **change)) != base, change
    ds = load_dataset(shapes_cfg(tmp_path, val_fraction=0.0))
    assert len(ds.val_idx) == 0 and load_dataset(shapes_cfg(tmp_path, val_fraction=0.25)).from_cache
    assert len(render_calls) == 1


@pytest.mark.parametrize("damage", ["truncate_images", "garbage_meta", "flip_pixel", "delete_images"])
def test_a_damaged_cache_is_ignored_and_rebuilt(tmp_path, render_calls, damage):
    first = load_dataset(shapes_cfg(tmp_path))
    folder = tmp_path / "cache" / first.fingerprint
    images_file = folder / "images.safetensors"
    if damage == "truncate_images":
        images_file.write_bytes(images_file.read_bytes()[:100])
    elif damage == "garbage_meta":
        (folder / "meta.json").write_text("{not json", encoding="utf-8")
    elif damage == "flip_pixel":
        raw = bytearray(images_file.read_bytes())
        raw[-1] ^= 0xFF
        images_file.write_bytes(bytes(raw))
    else:
        images_file.unlink()
    with pytest.warns(DataWarning, match="damaged data cache"):
        rebuilt = load_dataset(shapes_cfg(tmp_path))
    assert len(render_calls) == 2 and not rebuilt.from_cache
    assert torch.equal(rebuilt.images, first.images)
    assert load_dataset(shapes_cfg(tmp_path)).from_cache and len(render_calls) == 2


# --- folders --------------------------------------------------------------------------------------------

def make_messy_folder(root: Path) -> None:
    """3 good images (png, jpg, RGBA png), a truncated jpg, an image without caption, a stray .txt."""
    save_image(root / "a_red.png", Image.new("RGB", (40, 24), (200, 30, 30)), "a red square")
    save_image(root / "b_blue.jpg", Image.new("RGB", (24, 24), (30, 30, 200)), "a blue square", quality=95)
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> white
    save_image(root / "c_clear.png", rgba, "nothing at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "d_bad.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "d_bad.txt").write_text("a broken file", encoding="utf-8")
    save_image(root / "e_uncaptioned.png", Image.new("RGB", (16, 16), "green"))
    (root / "notes.txt").write_text("my notes", encoding="utf-8")


def test_messy_folder_loads_the_good_images_and_warns_once_with_counts(tmp_path):
    root = tmp_path / "photos"
    make_messy_folder(root)
    before = snapshot(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(folder_cfg(root, tmp_path, val_fraction=0.0))
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1, messages
    assert "using 3 of 5 images" in messages[0] and str(root) in messages[0]
    assert "1 unreadable (d_bad.jpg)" in messages[0]
    assert "1 without caption (e_uncaptioned.png)" in messages[0]
    assert "1 non-image file (notes.txt)" in messages[0]
    assert ds.skipped == {"unreadable": 1, "no_caption": 1, "non_image": 1}
    assert ds.captions == ["a red square", "a blue square", "nothing at all"]
    assert ds.source == "folder" and ds.specs == [None, None, None]
    assert ds.images.shape == (3, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert (ds.images[0, 0] > 180).all() and (ds.images[0, 2] < 50).all()  # red, resized from 40x24
    assert (ds.images[1, 2] > 180).all() and (ds.images[1, 0] < 60).all()  # blue jpg
    assert (ds.images[2] == 255).all()  # transparent composited on white
    assert snapshot(root) == before  # the user's folder is never modified


def test_folder_cache_is_reused_and_invalidated_by_edits(tmp_path):
    root = tmp_path / "photos"
    save_image(root / "a.png", Image.new("RGB", (16, 16), "red"), "red")
    save_image(root / "b.png", Image.new("RGB", (16, 16), "blue"), "blue")
    first = load_dataset(folder_cfg(root, tmp_path))
    again = load_dataset(folder_cfg(root, tmp_path))
    assert again.from_cache and again.fingerprint == first.fingerprint and again.captions == first.captions
    (root / "b.txt").write_text("a much better caption", encoding="utf-8")
    edited = load_dataset(folder_cfg(root, tmp_path))
    assert not edited.from_cache and edited.fingerprint != first.fingerprint
    assert edited.captions == ["red", "a much better caption"]
    save_image(root / "c.png", Image.new("RGB", (16, 16), "green"), "green")
    assert len(load_dataset(folder_cfg(root, tmp_path))) == 3


def test_metadata_jsonl_with_subfolders_and_unicode_wins_over_sidecars(tmp_path):
    root = tmp_path / "hf"
    save_image(root / "train" / "cube.png", Image.new("RGB", (16, 16), "red"), "sidecar loses")
    save_image(root / "train" / "sub" / "ball.jpg", Image.new("RGB", (16, 16), "blue"))
    save_image(root / "train" / "only_sidecar.png", Image.new("RGB", (16, 16), "green"), "  a green 🙂 square\n")
    lines = [{"file_name": "train/cube.png", "text": "  ein roter Würfel — 立方体  "},
             {"file_name": "train/sub/ball.jpg", "text": "une balle bleue"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n",
                                         encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was skipped: no warning at all
        ds = load_dataset(folder_cfg(root, tmp_path))
    assert ds.captions == ["ein roter Würfel — 立方体", "a green 🙂 square", "une balle bleue"]
    assert ds.skipped == {}
    assert load_dataset(folder_cfg(root, tmp_path)).captions == ds.captions  # unicode survives the cache


def test_broken_metadata_line_names_the_file_and_line(tmp_path):
    root = tmp_path / "hf"
    save_image(root / "a.png", Image.new("RGB", (16, 16), "red"))
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{"text": "no name"}\n')
    with pytest.raises(DataError, match="metadata.jsonl line 2"):
        load_dataset(folder_cfg(root, tmp_path))


def test_cmyk_16bit_grayscale_palette_and_exif_images_load_as_upright_rgb(tmp_path):
    root = tmp_path / "modes"
    save_image(root / "a_cmyk.jpg", Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "cmyk red", quality=95)
    sixteen = Image.fromarray(np.full((20, 36), 32896, dtype=np.uint16))  # 32896 / 257 = 128
    assert sixteen.mode == "I;16"
    save_image(root / "b_16bit.png", sixteen, "16-bit gray")
    save_image(root / "c_gray.png", Image.new("L", (17, 50), 77), "gray")
    save_image(root / "d_palette.gif", Image.new("RGB", (16, 16), (0, 0, 255)).convert("P"), "palette")
    upright = Image.new("RGB", (32, 32), "blue")
    upright.paste((255, 0, 0), (0, 0, 32, 16))  # stored: top red, bottom blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": top becomes right
    save_image(root / "e_exif.png", upright, "rotated", exif=exif)
    ds = load_dataset(folder_cfg(root, tmp_path))
    assert ds.images.shape == (5, 3, 16, 16) and len(ds.skipped) == 0
    img = ds.images.int()
    assert (img[0, 0] > 200).all() and (img[0, 1:] < 60).all()
    assert ((img[1] - 128).abs() <= 1).all()
    assert ((img[2] - 77).abs() <= 1).all()
    assert (img[3, 2] > 240).all() and (img[3, :2] < 15).all()
    assert (img[4, 0, :, -4:] > 200).all() and (img[4, 0, :, :4] < 50).all()  # red on the right


def test_center_crop_keeps_the_middle_of_a_wide_image(tmp_path):
    root = tmp_path / "wide"
    wide = Image.new("RGB", (64, 32), "red")
    wide.paste((0, 255, 0), (16, 0, 48, 32))  # the middle 32x32 square is green
    save_image(root / "wide.png", wide, "green in the middle")
    ds = load_dataset(folder_cfg(root, tmp_path))
    reference = np.asarray(wide.resize((32, 16), Image.Resampling.LANCZOS).crop((8, 0, 24, 16)))
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), reference)  # shorter side to 16, center crop
    assert (ds.images[0, 1, :, 2:-2] >= 250).all() and (ds.images[0, 0, :, 2:-2] <= 5).all()  # green, no red


def test_too_small_and_decompression_bombs_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 24x24=576: a warning; 40x40=1600: an error
    root = tmp_path / "edge"
    save_image(root / "ok.png", Image.new("RGB", (16, 16), "red"), "fine")
    save_image(root / "tiny.png", Image.new("RGB", (4, 30), "red"), "too small")
    save_image(root / "bomb_warn.png", Image.new("RGB", (24, 24), "red"), "bomb")
    save_image(root / "bomb_error.png", Image.new("RGB", (40, 40), "red"), "bomb")
    with pytest.warns(DataWarning, match="using 1 of 4 images") as record:
        ds = load_dataset(folder_cfg(root, tmp_path))
    assert len(ds) == 1 and ds.skipped == {"too_small": 1, "too_large": 2}
    assert "tiny.png" in str(record[0].message)


def test_num_samples_caps_a_folder_in_sorted_order(tmp_path):
    root = tmp_path / "many"
    for name in ["c", "a", "b"]:
        save_image(root / f"{name}.png", Image.new("RGB", (16, 16), "red"), f"image {name}")
    ds = load_dataset(folder_cfg(root, tmp_path, num_samples=2))
    assert ds.captions == ["image a", "image b"]


@pytest.mark.parametrize("layout", ["empty", "only_non_images", "only_uncaptioned", "missing", "a_file"])
def test_unusable_folder_raises_data_error_naming_the_path(tmp_path, layout):
    root = tmp_path / "data_dir"
    if layout != "missing":
        root.mkdir()
    if layout == "only_non_images":
        (root / "readme.md").write_text("hi")
        (root / "orphan.txt").write_text("a caption without image")
    elif layout == "only_uncaptioned":
        save_image(root / "x.png", Image.new("RGB", (16, 16)))
    elif layout == "a_file":
        root.rmdir()
        root.write_text("not a folder")
    with pytest.raises(DataError, match="data.path") as err:
        load_dataset(folder_cfg(root, tmp_path))
    assert str(root) in str(err.value)
    assert isinstance(err.value, ValueError)


# --- preview and CLI ------------------------------------------------------------------------------------

def test_preview_grid_size_and_upscaled_first_image(tmp_path):
    ds = load_dataset(shapes_cfg(tmp_path, resolution=32, num_samples=10))
    grid = data.preview_grid(ds, n=10, cols=4, scale=3)
    cell_h = grid.height // 3  # 10 images in 4 columns: 3 rows
    assert grid.width == 4 * (96 + data.GUTTER) and grid.height == 3 * cell_h and cell_h > 96 + 10
    first = np.asarray(ds.images[0].permute(1, 2, 0)).repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(np.asarray(grid)[:96, :96], first)
    small = data.preview_grid(ds, n=3, cols=8, scale=2)  # cells are widened to fit captions
    assert small.width == 3 * (data.MIN_CELL_WIDTH + data.GUTTER)
    assert data.preview_grid(ds, n=100).width == 8 * (96 + data.GUTTER)  # n larger than the set is fine


def test_wrap_keeps_captions_inside_the_cell():
    from t2ilab import image_grids

    lines = image_grids.wrap("a very long caption " * 10 + "supercalifragilisticexpialidociousword", 96, data.CAPTION_LINES)
    assert len(lines) == data.CAPTION_LINES and lines[-1].endswith("...")
    assert all(image_grids.FONT.getlength(line) <= 96 for line in lines)
    assert image_grids.wrap("a red circle", 96) == ["a red circle"]  # short captions are left alone
    long_word = image_grids.wrap("supercalifragilisticexpialidociousword", 40)
    assert len(long_word) == 1 and long_word[0].endswith("...") and image_grids.FONT.getlength(long_word[0]) <= 40


def test_preview_command_writes_png_and_reports(tmp_path, capsys, render_calls):
    args = ["--config", str(TINY_CONFIG), "--set", f"output_dir={tmp_path / 'out'}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "-n", "8"]
    assert data.main(args) == 0
    out = capsys.readouterr().out
    png = tmp_path / "out" / "data_preview.png"
    assert png.is_file() and Image.open(png).size[0] > 0
    # 4 of 64 held out at val_fraction 0.125: the count is binomial since the split became a hash per sample
    assert str(png) in out and "60 train / 4 val" in out and "cache miss" in out
    assert data.main(args + ["--out", str(tmp_path / "p.png")]) == 0
    assert "cache hit" in capsys.readouterr().out and (tmp_path / "p.png").is_file()
    assert len(render_calls) == 1


def test_preview_command_bad_config_returns_2_with_one_message(tmp_path, capsys):
    assert data.main(["--config", str(TINY_CONFIG), "--set", "data.resolution=7"]) == 2
    err = capsys.readouterr().err
    assert "data.resolution" in err and "Traceback" not in err
    missing = tmp_path / "nowhere"
    args = ["--set", "data.source=folder", "--set", f"data.path={missing}", "--set", f"output_dir={tmp_path}"]
    assert data.main(args) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and str(missing) in err and "Traceback" not in err


def test_a_caption_full_of_unique_words_cannot_grow_the_text_encoder_without_bound():
    import warnings

    from t2ilab.config import ModelConfig
    from t2ilab.training import text

    captions = ["a red circle"] * 3 + [" ".join(f"w{i}" for i in range(k, k + 500)) for k in range(0, 30_000, 500)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vocabulary = text.caption_vocabulary(captions)
        capped = text.caption_vocabulary(captions, max_size=100)
    assert len(vocabulary) == text.MAX_VOCABULARY and {"a", "red", "circle"} <= set(vocabulary)
    assert len(capped) == 100 and {"a", "red", "circle"} <= set(capped), "the most frequent words are kept"
    assert any("30003 distinct words" in str(w.message) for w in caught)
    # Only the words the encoder reads count: 24 tokens per caption here.
    encoder, tokenizer, _ = text.build_text_encoder(ModelConfig(max_caption_tokens=24), captions)
    assert len(tokenizer) <= len(text.SPECIAL_TOKENS) + 3 + 24 * 60
    assert encoder.config.vocab_size == len(tokenizer)
