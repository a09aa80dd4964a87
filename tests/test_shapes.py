"""The shapes data set: deterministic renders, the category mix, caption forms and the caption parser."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from t2ilab.config import CATEGORIES
from t2ilab.datasets.shapes import (
    COLORS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    caption_for,
    parse_caption,
    render_shapes_dataset,
    render_spec,
    sample_spec,
)

ALL = {c: 1.0 for c in CATEGORIES}
_COLOR = "(?:" + "|".join(COLORS) + ")"
_SHAPE = "(?:" + "|".join(SHAPES) + ")"
_OBJ = rf"a (?:{_COLOR} )?{_SHAPE}"
# The documented caption form of each category.
CAPTION_FORMS = {
    "single_object": rf"a (?:small |large )?{_SHAPE}",
    "two_objects": rf"a {_SHAPE} and a {_SHAPE}",
    "counting": rf"(?:two|three|four) (?:{_COLOR} )?{_SHAPE}s",
    "colors": rf"a {_COLOR} {_SHAPE}",
    "position": rf"a {_COLOR} {_SHAPE} (?:on the left|on the right|at the top|at the bottom)"
    rf"|a {_COLOR} {_SHAPE} (?:above|below|left of|right of) a {_COLOR} {_SHAPE}",
    "color_attr": rf"a {_COLOR} {_SHAPE} and a {_COLOR} {_SHAPE}",
}


def test_same_seed_is_byte_identical_and_another_seed_differs():
    images, captions, specs = render_shapes_dataset(60, 32, seed=3, category_mix=ALL)
    again, captions_again, specs_again = render_shapes_dataset(60, 32, seed=3, category_mix=ALL)
    other, other_captions, _ = render_shapes_dataset(60, 32, seed=4, category_mix=ALL)
    assert images.dtype == np.uint8 and images.shape == (60, 32, 32, 3)
    assert images.tobytes() == again.tobytes()
    assert captions == captions_again and specs == specs_again
    assert not np.array_equal(images, other) and captions != other_captions


def test_sample_i_does_not_depend_on_the_number_of_samples():
    short, short_captions, _ = render_shapes_dataset(10, 32, seed=9, category_mix=ALL)
    long, long_captions, _ = render_shapes_dataset(30, 32, seed=9, category_mix=ALL)
    assert np.array_equal(short, long[:10]) and short_captions == long_captions[:10]


def test_category_mix_is_respected():
    _, _, specs = render_shapes_dataset(300, 32, seed=1, category_mix={**ALL, "counting": 0.0, "position": 0.0})
    seen = {s["category"] for s in specs}
    assert seen == set(CATEGORIES) - {"counting", "position"}
    _, _, only = render_shapes_dataset(40, 32, seed=1, category_mix={"colors": 2.0})
    assert {s["category"] for s in only} == {"colors"}
    # Weight 3:1 gives roughly three times as many.
    _, _, skewed = render_shapes_dataset(800, 16, seed=2, category_mix={"colors": 3.0, "two_objects": 1.0})
    share = np.mean([s["category"] == "colors" for s in skewed])
    assert 0.70 < share < 0.80


def test_bad_category_mix_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match="single_object"):
        render_shapes_dataset(4, 32, seed=0, category_mix={"dogs": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        render_shapes_dataset(4, 32, seed=0, category_mix={c: 0.0 for c in CATEGORIES})


def test_every_category_has_captions_of_the_documented_form_and_json_specs():
    _, captions, specs = render_shapes_dataset(600, 32, seed=5, category_mix=ALL)
    for caption, spec in zip(captions, specs):
        assert re.fullmatch(CAPTION_FORMS[spec["category"]], caption), (spec["category"], caption)
        assert json.loads(json.dumps(spec)) == spec
    assert {s["category"] for s in specs} == set(CATEGORIES)
    # Counting uses 2..4 identical objects; two-object categories use two different shapes.
    assert {s["count"] for s in specs if s["category"] == "counting"} == {2, 3, 4}
    for spec in specs:
        if len(spec["objects"]) == 2:
            assert spec["objects"][0]["shape"] != spec["objects"][1]["shape"]
        if spec["category"] == "color_attr":
            assert spec["objects"][0]["color"] != spec["objects"][1]["color"]


def test_vocabulary_covers_six_colours_three_shapes_two_sizes_and_all_positions():
    assert len(COLORS) >= 6 and SHAPES == ("circle", "square", "triangle") and SIZES == ("small", "large")
    _, captions, specs = render_shapes_dataset(600, 32, seed=6, category_mix=ALL)
    words = set(" ".join(captions).split())
    assert set(COLORS) <= words and set(SIZES) <= words
    assert {o["shape"] for s in specs for o in s["objects"]} == set(SHAPES)
    assert {s["position"] for s in specs if s["position"]} == set(POSITIONS)
    assert {s["relation"] for s in specs if s["relation"]} == set(RELATIONS)


def test_captions_read_as_english():
    rng = np.random.default_rng(0)
    counting = {"category": "counting", "objects": [{"shape": "triangle", "color": "green", "size": None}],
                "count": 3, "position": None, "relation": None}
    assert caption_for(counting) == "three green triangles"
    relative = {"category": "position", "count": 2, "position": None, "relation": "above",
                "objects": [{"shape": "circle", "color": "red", "size": None},
                            {"shape": "square", "color": "blue", "size": None}]}
    assert caption_for(relative) == "a red circle above a blue square"
    assert caption_for(sample_spec("single_object", rng)).startswith("a ")


def test_parse_caption_inverts_caption_for():
    rng = np.random.default_rng(11)
    for category in CATEGORIES:
        for _ in range(50):
            spec = sample_spec(category, rng)
            assert parse_caption(caption_for(spec)) == spec
    assert parse_caption("  A Yellow Square on the left. ")["position"] == "left"


@pytest.mark.parametrize("text", ["a dog", "", "three", "a red", "a circle and", "two circle", "a circle near a square",
                                  "circles", "a circle on the left and a square"])
def test_parse_caption_rejects_text_outside_the_grammar(text):
    assert parse_caption(text) is None


@pytest.mark.parametrize("resolution", [16, 64, 128])
def test_every_category_renders_at_other_resolutions(resolution):
    images, _, specs = render_shapes_dataset(36, resolution, seed=7, category_mix=ALL)
    assert images.shape == (36, resolution, resolution, 3) and images.dtype == np.uint8
    assert {s["category"] for s in specs} == set(CATEGORIES)
    assert all(img.max() > 100 for img in images)  # something was drawn in every image


def test_four_objects_fit_at_16_pixels():
    spec = {"category": "counting", "objects": [{"shape": "square", "color": None, "size": None}],
            "count": 4, "position": None, "relation": None}
    for seed in range(20):
        image = render_spec(spec, 16, np.random.default_rng(seed))
        assert image.shape == (16, 16, 3)


def test_objects_stay_inside_the_image_on_a_plain_background():
    images, _, _ = render_shapes_dataset(200, 32, seed=8, category_mix=ALL)
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    assert border.max() == 0  # the background is black and no object reaches the edge


def test_unknown_attributes_are_refused():
    spec = {"category": "colors", "objects": [{"shape": "star", "color": "red", "size": None}],
            "count": 1, "position": None, "relation": None}
    with pytest.raises(ValueError, match="circle"):
        render_spec(spec, 32, np.random.default_rng(0))
