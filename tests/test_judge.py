"""The judge: near-perfect on real renders, at or below chance on noise and blanks, wrong on the right attribute,
and each skill judged on its own (a right-colour, wrong-shape object scores colour but not shape)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from t2ilab.config import CATEGORIES
from t2ilab.datasets.shapes import COLORS, render_shapes_dataset, render_spec
from t2ilab.review.judge import (
    SKILLS,
    category_scores,
    find_objects,
    judge_ceiling,
    judge_image,
    judge_images,
    skill_scores,
    wilson_interval,
)

ALL = {c: 1.0 for c in CATEGORIES}
FRESH_SEED = 5_550_123  # never used while the judge was tuned


@pytest.fixture(scope="module")
def real():
    """2000 fresh renders at the default 32 px, all six categories."""
    return render_shapes_dataset(2000, 32, seed=FRESH_SEED, category_mix=ALL)


def spec_of(category: str, objects: list[tuple], count: int = 1, position=None, relation=None) -> dict:
    return {"category": category, "objects": [{"shape": s, "color": c, "size": z} for s, c, z in objects],
            "count": count, "position": position, "relation": relation}


def test_real_renders_are_judged_correct_in_every_category(real):
    images, _, specs = real
    scores = category_scores(judge_images(images, specs)).set_index("category")
    for category in CATEGORIES:
        assert scores.loc[category, "n"] >= 250
        assert scores.loc[category, "accuracy"] >= 0.99, scores
    assert scores.loc["overall", "accuracy"] >= 0.99
    skills = skill_scores(judge_images(images, specs)).set_index("skill")
    assert list(skills.index) == list(SKILLS)  # every skill is claimed by some caption of the mix
    assert (skills["accuracy"] >= 0.99).all(), skills


def test_mismatched_specs_score_at_analytic_chance(real):
    """Pair each image with the spec of another image of its category: the judge must not accept everything."""
    images, _, specs = real
    rng = np.random.default_rng(0)
    shuffled = list(specs)
    for category in CATEGORIES:
        index = [i for i, s in enumerate(specs) if s["category"] == category]
        for i, j in zip(index, rng.permutation(index)):
            shuffled[i] = specs[j]
    accuracy = judge_images(images, shuffled).groupby("category")["correct"].mean()
    # single_object: shape 1/3, times size 1/2 when the caption gives one (half do); two_objects: 1 of 3
    # shape pairs; colors: 1/3 shapes x 1/6 colours. Counting, position and color_attr are rarer still.
    chance = {"single_object": 1 / 3 * (0.5 + 0.5 * 0.5), "two_objects": 1 / 3, "colors": 1 / 18}
    for category, p in chance.items():
        assert abs(accuracy[category] - p) < 0.08, (category, accuracy[category], p)
    for category in ("counting", "position", "color_attr"):
        assert accuracy[category] < 0.15


def test_noise_and_blank_images_score_below_chance():
    _, _, specs = render_shapes_dataset(300, 32, seed=FRESH_SEED + 1, category_mix=ALL)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    black = np.zeros_like(noise)
    solid = np.broadcast_to(rng.integers(0, 256, (300, 1, 1, 3), dtype=np.uint8), noise.shape)
    palette = np.array(list(COLORS.values()), dtype=np.uint8)
    palette_solid = np.broadcast_to(palette[np.arange(300) % len(palette)][:, None, None], noise.shape)
    for name, images in [("noise", noise), ("black", black), ("solid", solid), ("palette solid", palette_solid)]:
        judged = judge_images(images, specs)
        accuracy = judged.groupby("category")["correct"].mean()
        # The lowest chance level of a category with free guesses is colors at 1/18; stay below it.
        assert (accuracy <= 0.05).all(), (name, accuracy.to_dict())
        skills = skill_scores(judged).set_index("skill")["accuracy"]
        assert (skills <= 0.05).all(), (name, skills.to_dict())
    assert judge_image(black[0], specs[0])["n_objects"] == 0


def render_pair(spec: dict, changed: dict, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The same layout drawn for two specs that differ only in given attributes."""
    return render_spec(spec, 32, np.random.default_rng(seed)), render_spec(changed, 32, np.random.default_rng(seed))


def test_recoloured_object_fails_on_colour_only():
    spec = spec_of("colors", [("circle", "red", None)])
    recoloured = spec_of("colors", [("circle", "blue", None)])
    original, image = render_pair(spec, recoloured)
    assert judge_image(original, spec)["correct"]
    verdict = judge_image(image, spec)
    assert verdict["color"] is False and verdict["shape"] and verdict["count"] and not verdict["correct"]


def test_right_colour_wrong_shape_scores_colour_not_shape():
    spec = spec_of("colors", [("circle", "red", None)])
    for other in ("square", "triangle"):
        _, image = render_pair(spec, spec_of("colors", [(other, "red", None)]))
        verdict = judge_image(image, spec)
        assert verdict["shape"] is False and verdict["color"] is True and verdict["count"] and not verdict["correct"]


def test_colour_of_an_unrecognised_blob_counts_for_colour_only():
    """A red cross is no shape of the data set: colour and count hold, shape and the strict verdict do not."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 14:18] = COLORS["red"]
    image[14:18, 8:24] = COLORS["red"]
    assert [o["shape"] for o in find_objects(image)] == [None]
    verdict = judge_image(image, spec_of("colors", [("circle", "red", None)]))
    assert verdict["color"] is True and verdict["count"] is True
    assert verdict["shape"] is False and verdict["correct"] is False


def test_swapped_colours_fail_binding_only():
    spec = spec_of("color_attr", [("circle", "red", None), ("square", "blue", None)], count=2)
    swapped = spec_of("color_attr", [("circle", "blue", None), ("square", "red", None)], count=2)
    original, image = render_pair(spec, swapped)
    assert judge_image(original, spec)["correct"] and judge_image(original, spec)["binding"]
    verdict = judge_image(image, spec)
    assert verdict["binding"] is False and not verdict["correct"]
    assert verdict["color"] and verdict["shape"] and verdict["count"]  # both colours and both shapes are there


def test_position_is_judged_on_the_best_matching_object():
    """ "a yellow triangle on the left" drawn as a yellow square on the left: position holds, shape and strict fail."""
    spec = spec_of("position", [("triangle", "yellow", None)], position="left")
    image = render_spec(spec_of("position", [("square", "yellow", None)], position="left"), 32, np.random.default_rng(6))
    verdict = judge_image(image, spec)
    assert verdict["position"] is True and verdict["color"] is True
    assert verdict["shape"] is False and verdict["correct"] is False
    assert judge_image(image, spec_of("position", [("triangle", "yellow", None)], position="right"))["position"] is False


def test_extra_or_missing_object_fails_counting():
    spec = spec_of("counting", [("square", "blue", None)], count=3)
    for drawn in (2, 4):
        image = render_spec(spec_of("counting", [("square", "blue", None)], count=drawn), 32, np.random.default_rng(4))
        verdict = judge_image(image, spec)
        assert verdict["count"] is False and not verdict["correct"]
        assert verdict["n_objects"] == drawn
    # An extra object of another kind next to "a red circle" is also one object too many.
    two = spec_of("color_attr", [("circle", "red", None), ("square", "blue", None)], count=2)
    both = render_spec(two, 32, np.random.default_rng(5))
    verdict = judge_image(both, spec_of("colors", [("circle", "red", None)]))
    assert verdict["count"] is False and verdict["shape"] and verdict["color"]


def test_wrong_size_fails_single_object():
    spec = spec_of("single_object", [("square", None, "small")])
    original, image = render_pair(spec, spec_of("single_object", [("square", None, "large")]))
    assert judge_image(original, spec)["correct"]
    verdict = judge_image(image, spec)
    assert verdict["size"] is False and verdict["shape"] is True and not verdict["correct"]


def test_wrong_position_fails_on_position_only():
    for claimed, wrong in [("left", "right"), ("top", "bottom")]:
        spec = spec_of("position", [("triangle", "yellow", None)], position=claimed)
        image = render_spec(spec, 32, np.random.default_rng(6))
        assert judge_image(image, spec)["correct"]
        verdict = judge_image(image, spec_of("position", [("triangle", "yellow", None)], position=wrong))
        assert verdict["position"] is False and verdict["shape"] and verdict["color"] and verdict["count"]
    objects = [("circle", "red", None), ("square", "blue", None)]
    for relation, opposite in [("above", "below"), ("left of", "right of")]:
        image = render_spec(spec_of("position", objects, 2, relation=relation), 32, np.random.default_rng(7))
        assert judge_image(image, spec_of("position", objects, 2, relation=relation))["correct"]
        verdict = judge_image(image, spec_of("position", objects, 2, relation=opposite))
        assert verdict["position"] is False and verdict["color"] and not verdict["correct"]


def test_unclaimed_attributes_are_none():
    spec = spec_of("two_objects", [("circle", None, None), ("triangle", None, None)], 2)
    verdict = judge_image(render_spec(spec, 32, np.random.default_rng(8)), spec)
    assert verdict["correct"] and verdict["color"] is None and verdict["position"] is None
    assert verdict["size"] is None and verdict["binding"] is None


def test_uint8_pil_and_model_range_tensor_give_the_same_verdict(real):
    images, _, specs = real
    for image, spec in zip(images[:12], specs[:12]):
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1  # the model's output range
        expected = judge_image(image, spec)
        assert judge_image(Image.fromarray(image), spec) == expected
        assert judge_image(tensor, spec) == expected
    batch = torch.from_numpy(images[:12]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert judge_images(batch, specs[:12]).equals(judge_images(images[:12], specs[:12]))
    with pytest.raises(ValueError, match="uint8"):
        judge_image(images[0].astype(np.float32), specs[0])


def test_found_objects_have_the_rendered_attributes():
    spec = spec_of("color_attr", [("triangle", "green", None), ("circle", "purple", None)], count=2)
    found = sorted(find_objects(render_spec(spec, 64, np.random.default_rng(9))), key=lambda o: o["shape"])
    assert [(o["shape"], o["color"]) for o in found] == [("circle", "purple"), ("triangle", "green")]


def test_wilson_interval_and_category_scores():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] < 1.0  # non-degenerate at 100%

    def frame(n: int) -> pd.DataFrame:
        rows = [{"category": c, "correct": i % 4 != 0, "shape": True, "color": None, "count": i % 4 != 0,
                 "position": None, "n_objects": 1} for c in ("colors", "counting") for i in range(n)]
        return pd.DataFrame(rows)

    small, large = category_scores(frame(40)).set_index("category"), category_scores(frame(400)).set_index("category")
    assert list(small.index) == ["counting", "colors", "overall"]  # CATEGORIES order, then overall
    assert small.loc["colors", "accuracy"] == 0.75 and small.loc["overall", "n"] == 80
    for scores in (small, large):
        assert (scores["ci_low"] <= scores["accuracy"]).all() and (scores["accuracy"] <= scores["ci_high"]).all()
    width = lambda s, c: s.loc[c, "ci_high"] - s.loc[c, "ci_low"]  # noqa: E731
    assert width(large, "colors") < width(small, "colors") / 2 and width(large, "overall") < width(small, "overall") / 2
    assert small.loc["overall", "shape_accuracy"] == 1.0 and np.isnan(small.loc["overall", "position_accuracy"])


def test_judge_ceiling_reports_every_category_and_overall():
    ceiling = judge_ceiling(n_per_category=12, resolution=32, seed=1).set_index("category")
    assert list(ceiling.index) == [*CATEGORIES, "overall"]
    assert (ceiling.loc[list(CATEGORIES), "n"] == 12).all()
    assert ceiling.loc["overall", "accuracy"] >= 0.95


def test_skill_scores_count_only_captions_that_claim_the_skill():
    rows = [{"category": "colors", "correct": False, "color": True, "shape": False, "size": None, "count": True,
             "position": None, "binding": None, "n_objects": 1}] * 3
    rows += [{"category": "colors", "correct": False, "color": False, "shape": False, "size": None, "count": True,
              "position": None, "binding": None, "n_objects": 1}]
    table = skill_scores(pd.DataFrame(rows)).set_index("skill")
    assert list(table.index) == ["color", "shape", "count"]  # size, position, binding: never claimed
    assert table.loc["color", "accuracy"] == 0.75 and table.loc["color", "n"] == 4
    assert (table.loc["color", "ci_low"], table.loc["color", "ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert table.loc["shape", "accuracy"] == 0.0 and table.loc["count", "accuracy"] == 1.0
    with pytest.raises(ValueError, match="binding"):
        skill_scores(pd.DataFrame(rows).drop(columns="binding"))
