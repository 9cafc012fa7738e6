"""The app's plain logic: setup settings, rule controls, job display, gallery tiles, comparisons, charts.

Expected values are worked out by hand in each test.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.drop_rules import DropRule
from curator import app_charts, app_compare, app_review, app_state, gallery


def test_upscale_nearest_repeats_pixels():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    large = gallery.upscale_nearest(image, min_side=128)

    assert large.shape == (128, 128)
    for row, column in ((0, 0), (3, 5), (7, 7)):
        block = large[16 * row:16 * row + 16, 16 * column:16 * column + 16]
        assert (block == image[row, column]).all()


def test_upscale_nearest_color_and_large_images():
    color = np.zeros((4, 6, 3), dtype=np.uint8)
    color[1, 2] = (10, 20, 30)

    large = gallery.upscale_nearest(color, min_side=128)
    assert large.shape == (128, 192, 3)
    assert tuple(large[32 + 5, 64 + 7]) == (10, 20, 30)
    assert gallery.upscale_nearest(np.zeros((200, 300)), min_side=128).shape == (200, 300)
    with pytest.raises(ValueError, match="shape"):
        gallery.upscale_nearest(np.zeros(5))


def test_tile_caption_and_badges():
    row = {"index": 412, "label": 3, "prediction": 5, "influence": 0.02134, "true_label": 8,
           "decision": "drop", "source": "person"}

    assert gallery.tile_caption(row) == "#412 · label 3 · pred 5 · score +0.0213"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert gallery.tile_caption(row, names) == "#412 · label three · pred five · score +0.0213"
    assert gallery.flip_badge(row) == "flipped, true 8"
    assert gallery.decision_badge(row) == ("drop · you", "red")
    clean = {**row, "true_label": float("nan"), "decision": "keep", "source": "rule"}
    assert gallery.flip_badge(clean) is None
    assert gallery.decision_badge(clean) == ("keep · rule", "green")


def test_gallery_paging():
    assert gallery.page_count(0, 20) == 1
    assert gallery.page_count(1257, 20) == 63
    assert gallery.clamp_page(99, 1257, 20) == 62
    assert gallery.clamp_page(-3, 1257, 20) == 0
    assert gallery.page_span(62, 1257, 20) == "samples 1,241–1,257 of 1,257"
    assert gallery.page_span(0, 0, 20) == "no samples"


def test_choose_run_prefers_request():
    assert app_state.choose_run(["b", "a"], "a") == "a"
    assert app_state.choose_run(["b", "a"], "gone") == "b"
    assert app_state.choose_run([], "a") is None


def test_make_rule_from_controls():
    assert app_state.make_rule("top_k", 12.0, 0.5) == DropRule("top_k", 12, 0.5)
    assert isinstance(app_state.make_rule("top_k", 12.0, 0.5).value, int)
    assert app_state.make_rule("paper", 3.0, 1.0) == DropRule("paper", None, 1.0)
    assert app_state.make_rule("threshold", -0.5, 1 / 3).value == -0.5
    with pytest.raises(ValueError, match="share in"):
        app_state.make_rule("top_fraction", 1.5, 1.0)
    with pytest.raises(ValueError, match="needs a value"):
        app_state.make_rule("threshold", None, 1.0)


def test_make_rule_keeps_hidden_settings():
    if "alpha" not in DropRule.__dataclass_fields__:
        pytest.skip("DropRule has no alpha setting that the rule controls leave out")
    current = DropRule("validated", 0.1, 0.5, alpha=0.05)

    assert app_state.make_rule("validated", 0.2, 0.25, current=current) == DropRule("validated", 0.2, 0.25, alpha=0.05)
    assert app_state.make_rule("top_k", 9, 0.25, current=current) == DropRule("top_k", 9, 0.25)


def test_default_rule_values():
    current = DropRule("top_k", 40, 0.2)

    assert app_state.default_rule_value("top_k", current) == 40
    assert app_state.default_rule_value("top_fraction", current) == 0.05
    assert app_state.default_rule_value("paper", current) is None
    assert app_state.default_class_cap(current) == 0.2
    assert app_state.default_class_cap(None) == pytest.approx(1 / 3)


def test_build_run_config_from_form():
    rule = DropRule("top_k", 5, 1.0)
    config = app_state.build_run_config("digits", "logreg", "exact", "hessian", 0.5, "  ", 3, 4, 0.1, rule, "")

    assert (config.model, config.solver, config.curvature, config.damping) == ("logreg", "exact", "hessian", 0.5)
    assert (config.params, config.epochs, config.seed, config.label_noise) == ("all", 3, 4, 0.1)
    assert config.data_dir is None
    assert DropRule.from_dict(config.drop_rule) == rule


@pytest.mark.parametrize("arguments, message", [
    ({"solver": "newton"}, "unknown solver 'newton'"),
    ({"curvature": "fisher"}, "unknown curvature 'fisher'"),
    ({"dataset": "mnist_zip"}, "unknown dataset 'mnist_zip'"),
    ({"data_dir": "/data/digits"}, "reads no data folder"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"label_noise": 1.0}, "label noise 1.0"),
])
def test_build_run_config_rejects(arguments, message):
    values = {"dataset": "digits", "model": "small_cnn", "solver": "cg", "curvature": "gauss_newton",
              "damping": 0.01, "params": "all", "epochs": 2, "seed": 0, "label_noise": 0.0,
              "rule": DropRule(), "data_dir": None, **arguments}

    with pytest.raises(ValueError, match=message):
        app_state.build_run_config(**values)


def _state(**fields):
    return {"status": "running", "stage": "round1", "error": None, "progress": None, "alive": False, "pid": None,
            **fields}


@pytest.mark.parametrize("state, kind", [
    (_state(alive=True, pid=7), "starting"),
    (_state(alive=True, pid=7, progress={"pid": 6, "stage": "score", "step": 9, "total": 9}), "starting"),
    (_state(alive=True, pid=7, status="done", progress={"pid": 7, "stage": "round2", "step": 1, "total": 4}),
     "running"),
    (_state(status="interrupted", pid=7), "interrupted"),
    (_state(status="created", pid=7), "interrupted"),
    (_state(status="created"), "not_started"),
    (_state(status="failed", error="boom", pid=7), "failed"),
    (_state(status="scored", stage="review", pid=7), "finished"),
])
def test_describe_job_kinds(state, kind):
    assert app_state.describe_job(state).kind == kind


def test_describe_job_progress_text():
    progress = {"pid": 7, "stage": "round1", "step": 30, "total": 120, "message": "epoch 2 loss 0.41"}
    view = app_state.describe_job(_state(alive=True, pid=7, progress=progress))

    assert view.fraction == 0.25
    assert view.text == "Round 1 training: 30/120 · epoch 2 loss 0.41"
    assert view.active
    failed = app_state.describe_job(_state(status="failed", error="IndefiniteHessianError: raise damping"))
    assert failed.error == "IndefiniteHessianError: raise damping"
    assert not failed.active


def test_resume_plan():
    assert app_state.resume_plan({"stage": "score"}, 12) == (["round1", "score", "rule"], None)
    assert app_state.resume_plan({"stage": "round2"}, 12) == (["round2"], 12)
    assert app_state.resume_plan({"stage": "round2"}, None) == (["round1", "score", "rule"], None)


def _metrics():
    per_class_1 = [{"class": 0, "count": 100, "errors": 10, "error": 0.1},
                   {"class": 1, "count": 100, "errors": 10, "error": 0.1}]
    per_class_2 = [{"class": 0, "count": 100, "errors": 6, "error": 0.06},
                   {"class": 1, "count": 100, "errors": 10, "error": 0.1}]
    rows = [(1, "test", None, 0.10, 1000, per_class_1, "2026-01-01 10:00"),
            (1, "validation", None, 0.12, 1000, per_class_1, "2026-01-01 10:00"),
            (2, "test", 5.0, 0.08, 950, per_class_2, "2026-01-01 11:00"),
            (2, "test", 9.0, 0.30, 900, per_class_2, "2026-01-01 12:00")]
    columns = ["round", "split", "approval_id", "error", "n_train", "per_class", "created_at"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["per_class"] = frame["per_class"].map(json.dumps)
    frame["created_at"] = pd.to_datetime(frame["created_at"])
    frame["loss"] = 0.3
    frame["count"] = 200
    return frame


def test_comparison_of_rounds():
    result = app_compare.comparison(_metrics(), 5)

    assert (result["error_1"], result["error_2"]) == (0.10, 0.08)
    assert (result["n_train_1"], result["n_train_2"], result["count"]) == (1000, 950, 200)
    assert result["difference"] == pytest.approx(-0.02)
    assert result["se_1"] == pytest.approx(math.sqrt(0.1 * 0.9 / 200))
    assert result["difference_se"] == pytest.approx(math.sqrt(0.1 * 0.9 / 200 + 0.08 * 0.92 / 200))
    assert "within noise" in app_compare.verdict(result)
    assert app_compare.comparison(_metrics(), 6) is None
    assert app_compare.approvals_with_round2(_metrics()) == [9, 5]


def test_verdict_directions():
    worse = app_compare.comparison(_metrics(), 9)
    assert "higher by 20.0 percentage points" in app_compare.verdict(worse)
    better = {**worse, "difference": -0.2}
    assert "lower by 20.0 percentage points" in app_compare.verdict(better)


def test_per_class_errors_and_flips():
    errors = app_compare.per_class_errors(_metrics(), 5, ["zero", "one"])

    assert errors["Round"].tolist() == ["Round 1", "Round 1", "Round 2", "Round 2"]
    assert errors["Class"].tolist() == ["zero", "one", "zero", "one"]
    assert errors["Errors"].tolist() == [10, 10, 6, 10]
    curated = pd.DataFrame({"label": [1, 2, 3, 4], "true_label": [1, 0, 0, 4], "decision": ["drop", "drop", "keep",
                                                                                        "keep"]})
    assert app_compare.flipped_caught(curated) == (1, 2)
    assert app_compare.flipped_caught(curated.drop(columns="true_label")) == (0, 0)


def test_per_class_table_columns():
    frame = pd.DataFrame({"label": [0, 1], "count": [10, 20], "dropped": [1, 5], "share_dropped": [0.1, 0.25],
                          "mean_influence": [-0.5, 0.2], "flipped": [2, 3], "flipped_dropped": [1, 2]})

    noisy = app_review.per_class_table(frame, ["cat", "dog"], label_noise=True)
    assert noisy["Class"].tolist() == ["cat", "dog"]
    assert noisy["Flipped labels dropped"].tolist() == [1, 2]
    clean = app_review.per_class_table(frame, None, label_noise=False)
    assert "Flipped labels" not in clean
    assert clean["Class"].tolist() == ["0", "1"]


def test_review_texts():
    assert app_review.flipped_caught_text(75, 126, 85) == \
        "75 of 126 flipped labels are in the drop set (88% of the 85 dropped)."
    assert app_review.flipped_caught_text(0, 0, 10) == "No labels were flipped in this run."
    assert "lower the total validation loss by about 1.25" in app_review.estimate_text(-1.25)
    assert "raise the total validation loss" in app_review.estimate_text(0.5)


def test_solver_tables():
    influence = {"solver": "exact", "damping": 0.01, "num_params": 650,
                 "solves": {"b": {"min_eigenvalue": -0.25, "seconds": 1.0, "extra": 3},
                            "a": {"min_eigenvalue": 1e-3, "seconds": 2.5}}}

    table = app_review.solver_table(influence)
    assert table.columns.tolist() == ["Diagnostic", "Half A", "Half B"]
    assert table["Diagnostic"].tolist() == ["min eigenvalue", "seconds", "extra"]
    assert table["Half B"].tolist() == ["-0.25", "1", "3"]
    settings = app_review.solver_settings(influence)
    assert settings["Setting"].tolist() == ["Solver", "Damping", "Number of parameters"]
    timings = app_review.timings_table({"round1_seconds": 2.345, "solve_seconds": 10})
    assert timings.values.tolist() == [["round1", 2.35], ["solve", 10.0]]


def test_histogram_figure_marks_lines():
    bins = pd.DataFrame({"bin": [0, 1, 1, 2], "decision": ["keep", "keep", "drop", "drop"], "count": [5, 3, 1, 2],
                         "low": [-1.0, 0.0, 0.0, 1.0], "high": [0.0, 1.0, 1.0, 2.0]})
    figure = app_charts.histogram_figure(bins, cutoff=0.4, log_counts=True)

    bars = {trace.name: trace for trace in figure.data if trace.type == "bar"}
    assert list(bars["kept"].y) == [5, 3]
    assert list(bars["dropped"].x) == [0.5, 1.5]
    assert sorted(shape.x0 for shape in figure.layout.shapes) == [0.0, 0.4]
    assert figure.layout.yaxis.type == "log"
    assert len(app_charts.histogram_figure(bins).layout.shapes) == 1
    with_threshold = app_charts.histogram_figure(bins, cutoff=0.4, threshold=0.25)
    assert sorted(shape.x0 for shape in with_threshold.layout.shapes) == [0.0, 0.25, 0.4]
    assert "rule threshold 0.25" in [trace.name for trace in with_threshold.data]


def test_comparison_figures():
    result = app_compare.comparison(_metrics(), 5)
    overall = app_charts.error_overall_figure(result)

    assert [trace.y[0] for trace in overall.data] == [0.10, 0.08]
    assert overall.data[0].error_y.array[0] == pytest.approx(2 * result["se_1"])
    by_class = app_charts.error_by_class_figure(app_compare.per_class_errors(_metrics(), 5, None))
    assert [trace.name for trace in by_class.data] == ["Round 1", "Round 2"]
    assert list(by_class.data[1].y) == [0.06, 0.1]


def test_residual_curves_from_solves():
    influence = {"solves": {"b": {"residuals": [0.5, 0.01], "tolerance": 1e-4},
                            "a": {"relative_residuals": [0.2, None, 0.05]},
                            "c": {"iterations": 3}}}

    curves = app_review.residual_curves(influence)
    assert curves.values.tolist() == [["Half A", 1, 0.2], ["Half A", 3, 0.05], ["Half B", 1, 0.5],
                                      ["Half B", 2, 0.01]]
    assert app_review.solver_table(influence).set_index("Diagnostic").loc["residuals", "Half B"] == "0.5, 0.01"
    long = {"solves": {"a": {"residuals": [0.5, 0.4, 0.3, 0.2, 0.1]}}}
    assert app_review.solver_table(long)["Half A"].tolist() == ["5 values"]
    figure = app_charts.residual_figure(curves, tolerance=1e-4)
    assert [trace.name for trace in figure.data] == ["Half A", "Half B"]
    assert figure.layout.yaxis.type == "log"
    assert figure.layout.shapes[0].y0 == 1e-4


def test_run_config_from_preset_and_task():
    from core.drop_rules import DropRule
    from core.presets import PRESETS
    from curator.app_state import build_run_config

    rule = DropRule("top_k", 5, 1.0)
    preset = build_run_config("digits", "small_cnn", "cg", "gauss_newton", 0.1, "all", 3, 4, 0.1, rule,
                              "/data/cifar", preset="resnet110-cifar10-cpu", max_train_samples=100)
    denoise = build_run_config("digits", "small_cnn", "cg", "gauss_newton", 0.1, "all", 3, 4, 0.0, rule,
                               task="denoise")

    assert preset.model == PRESETS["resnet110-cifar10-cpu"]["model"]
    assert (preset.data_dir, preset.seed, preset.max_train_samples) == ("/data/cifar", 4, 100)
    assert preset.drop_rule == rule.to_dict()
    assert (denoise.task, denoise.model, denoise.seed) == ("denoise", "dncnn", 4)
