"""Plotly figures of an experiment: test error per arm, paired differences, per-class changes, detection.

Every figure names the split its numbers come from. Errors are shares in [0, 1], shown as percent.
"""

import pandas as pd
import plotly.graph_objects as go

from curator.label_noise import RANKING_LABELS

#: One color per arm, the same on every figure.
ARM_COLORS = {"round1": "#7f7f7f", "full": "#1f77b4", "dropout": "#2ca02c", "paper": "#d62728",
              "random": "#9467bd", "high_loss": "#ff7f0e"}


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white",
                         margin={"l": 10, "r": 10, "t": 50, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return figure


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "#17becf")


def arm_errors_figure(rows: pd.DataFrame, arm_labels: dict, split: str = "test") -> go.Figure:
    """Box plot with every seed's point, one box per arm of ``arm_labels``, of ``split`` error.

    ``rows`` are ``experiment_arms`` rows; ``arm_labels`` (the summary's) sets the order and the hover text.
    """
    rows = rows[rows["split"] == split]
    figure = go.Figure()
    for arm in [arm for arm in arm_labels if arm in set(rows["arm"])]:
        values = rows[rows["arm"] == arm]
        figure.add_trace(go.Box(y=values["error"], x=[arm] * len(values), name=arm, boxpoints="all", jitter=0.3,
                                pointpos=0, marker_color=_color(arm), hovertext=[f"seed {s}" for s in values["seed"]],
                                hovertemplate="%{hovertext}: %{y:.2%}<extra>" + arm_labels[arm] + "</extra>"))
    figure.update_yaxes(tickformat=".1%")
    figure.update_layout(showlegend=False)
    return _layout(figure, f"{split.capitalize()} error of each arm, one point per seed", "arm", f"{split} error")


def paired_figure(summary: dict, reference: str = "round1") -> go.Figure:
    """Mean paired test-error difference ``arm - reference`` with its t interval, one row per arm."""
    arms, means, lows, highs = [], [], [], []
    for arm, references in summary["paired_test_error"].items():
        paired = references.get(f"vs_{reference}")
        if paired is None:
            continue
        arms.append(arm)
        means.append(paired["mean"])
        lows.append(paired["mean"] - paired["low"] if paired["low"] is not None else 0.0)
        highs.append(paired["high"] - paired["mean"] if paired["high"] is not None else 0.0)
    figure = go.Figure(go.Scatter(
        x=means, y=arms, mode="markers", marker={"size": 11, "color": [_color(arm) for arm in arms]},
        error_x={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows}))
    figure.add_vline(x=0, line_dash="dash", line_color="#444")
    figure.update_xaxes(tickformat="+.1%")
    confidence = f"{summary['confidence']:.0%}"
    return _layout(figure, f"Test error minus {reference}'s, mean over seeds with its {confidence} interval "
                           f"(left of the line: lower error)", "difference in test error", "arm")


def per_class_figure(summary: dict, arms=("dropout", "paper")) -> go.Figure:
    """Grouped bars: each class's mean change in test error against round 1, for ``arms``."""
    figure = go.Figure()
    changes = summary["per_class_test_error_change_vs_round1"]
    for arm in arms:
        rows = changes.get(arm) or []
        figure.add_trace(go.Bar(x=[str(row["class"]) for row in rows], y=[row["change"] for row in rows], name=arm,
                                marker_color=_color(arm)))
    figure.update_yaxes(tickformat="+.1%")
    figure.update_layout(barmode="group")
    return _layout(figure, "Change in test error per class against round 1 (below zero: fewer errors)", "class",
                   "test error change")


def detection_curve_figure(summary: dict) -> go.Figure:
    """Share of flipped training labels found against share of training data inspected, per ranking."""
    figure = go.Figure()
    for name, values in summary["detection"].items():
        curve = values["curve"]
        figure.add_trace(go.Scatter(x=curve["inspected"], y=curve["found"], mode="lines", name=RANKING_LABELS[name]))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "#999"}))
    figure.update_xaxes(tickformat=".0%", range=[0, 1])
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return _layout(figure, "Flipped training labels found as each ranking is read from the top (mean over seeds)",
                   "share of training samples inspected", "share of flipped labels found")


def auroc_figure(summary: dict) -> go.Figure:
    """Bars of each ranking's mean AUROC for flipped training labels, with one standard deviation."""
    names = list(summary["detection"])
    means = [summary["detection"][name]["auroc"]["mean"] for name in names]
    stds = [summary["detection"][name]["auroc"]["std"] or 0.0 for name in names]
    figure = go.Figure(go.Bar(x=[RANKING_LABELS[name] for name in names], y=means,
                              error_y={"type": "data", "array": stds}))
    figure.add_hline(y=0.5, line_dash="dot", line_color="#999")
    figure.update_yaxes(range=[0, 1])
    return _layout(figure, "AUROC for finding flipped training labels (0.5 is chance)", "ranking", "AUROC")
