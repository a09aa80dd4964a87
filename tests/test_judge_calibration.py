"""The calibrated judge: graded degradations of real renders lower every skill monotonically, hit the skills they
should, and a blurred blob of the right colour still counts for colour but not for shape."""

from __future__ import annotations

import numpy as np
import pytest
from t2ilab.datasets.shapes import render_shapes_dataset, render_spec
from t2ilab.review.judge import SKILLS, judge_image
from t2ilab.review.judge_calibration import (
    MONOTONIC_TOLERANCE,
    STRENGTHS,
    calibration_curves,
    degrade,
    main,
    monotonic_violations,
    neighbour_colors,
)


@pytest.fixture(scope="module")
def curves():
    """Every degradation at every strength, 40 renders per category at the demo's 16 px (about 9 s)."""
    return calibration_curves(n_per_category=40, resolution=16, seed=4242)


def one(shape: str, color: str, size: str | None = None) -> dict:
    return {"category": "colors", "objects": [{"shape": shape, "color": color, "size": size}], "count": 1,
            "position": None, "relation": None}


def test_clean_renders_score_at_least_099_on_every_skill(curves):
    clean = curves[curves["strength"] == 0]
    assert set(clean["skill"]) == {*SKILLS, "strict"}
    assert (clean["accuracy"] >= 0.99).all(), clean
    images, _, _ = render_shapes_dataset(4, 16, 0, {"colors": 1.0})
    for kind in STRENGTHS:
        assert np.array_equal(degrade(images, kind, 0.0), images)


def test_every_skill_falls_monotonically_and_each_degradation_hits_what_it_should(curves):
    assert monotonic_violations(curves).empty, monotonic_violations(curves)
    at = curves.set_index(["degradation", "skill", "strength"])["accuracy"]
    strongest = {kind: levels[-1] for kind, levels in STRENGTHS.items()}
    for kind in ("blur", "erosion", "dilation"):  # these destroy objects: every skill ends near zero
        for skill in [*SKILLS, "strict"]:
            assert at[kind, skill, strongest[kind]] <= 0.2, (kind, skill)
    # A colour shift past halfway changes colour and binding only: shapes, sizes, counts and positions stay right.
    assert at["color_shift", "color", 1.0] <= 0.2 and at["color_shift", "binding", 1.0] == 0.0
    for skill in ("shape", "size", "count", "position"):
        assert at["color_shift", skill, 1.0] >= 0.99, skill
    # Jitter moves objects: position falls far more than colour.
    assert at["jitter", "position", 0.5] <= 0.4 and at["jitter", "color", 0.5] - at["jitter", "position", 0.5] >= 0.2
    assert at["noise", "strict", strongest["noise"]] <= 0.05


def test_monotonic_violations_flags_a_rise_beyond_the_tolerance(curves):
    tampered = curves.copy()
    row = tampered.index[(tampered["degradation"] == "blur") & (tampered["skill"] == "shape")
                         & (tampered["strength"] == 2.0)][0]
    tampered.loc[row, "accuracy"] = 1.0
    violations = monotonic_violations(tampered)
    assert list(violations[["degradation", "skill", "to"]].itertuples(index=False, name=None)) == [("blur", "shape", 2.0)]
    assert violations["rise"].iloc[0] > max(MONOTONIC_TOLERANCE, violations["allowed"].iloc[0])


def test_blurred_colour_correct_blob_counts_for_colour_but_not_shape():
    for shape in ("square", "triangle"):
        for seed in range(6):
            spec = one(shape, "red", "large")
            blob = degrade(render_spec(spec, 32, np.random.default_rng(seed))[None], "blur", 2.5)[0]
            verdict = judge_image(blob, spec)
            assert verdict["color"] is True and verdict["count"] is True, (shape, seed)
            assert verdict["shape"] is False and verdict["correct"] is False, (shape, seed)


def test_full_colour_shift_draws_the_neighbour_colour():
    neighbours = neighbour_colors()
    assert neighbours["red"] != "red" and set(neighbours.values()) <= set(neighbours)
    for color, neighbour in neighbours.items():
        drawn = render_spec(one("circle", color), 32, np.random.default_rng(1))
        expected = render_spec(one("circle", neighbour), 32, np.random.default_rng(1))
        shifted = degrade(drawn[None], "color_shift", 1.0)[0]
        assert np.abs(shifted.astype(int) - expected.astype(int)).max() <= 2, color


def test_cli_writes_the_figure_and_refuses_bad_sizes(tmp_path, capsys):
    out = tmp_path / "calibration.png"
    assert main(["--out", str(out), "--n_per_category", "1", "--resolution", "16"]) == 0
    assert out.stat().st_size > 10_000 and "non-monotonic steps" in capsys.readouterr().out
    assert main(["--n_per_category", "0"]) == 2
    assert "--n_per_category" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown degradation 'smear'"):
        degrade(np.zeros((1, 16, 16, 3), dtype=np.uint8), "smear", 1.0)
