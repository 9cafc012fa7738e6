"""Plotly figures of the app: the influence histogram, the per-class drop shares, and round comparisons.

Influence follows the engine's sign: samples right of zero are predicted to raise validation loss
(unfavorable), and the ``paper`` drop rule (Wang et al., data dropout, 2018) drops all of them.
"""

import math
from typing import Optional

import pandas as pd
import plotly.graph_objects as go

DECISION_COLORS = {"keep": "#8c9bab", "drop": "#d62728"}
ROUND_COLORS = {"Round 1": "#4c78a8", "Round 2": "#f58518"}


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    # The legend sits under the plot so that the plot keeps the column's full width.
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, legend_title_text="",
                         legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
                         margin={"l": 10, "r": 10, "t": 50, "b": 10}, height=400)
    return figure


def _marker_line(figure: go.Figure, x: float, name: str, color: str, dash: str) -> None:
    """Draw a vertical line at ``x`` and name it in the legend, where its label cannot overlap another."""
    figure.add_vline(x=x, line_dash=dash, line_color=color)
    figure.add_scatter(x=[None], y=[None], mode="lines", name=name, line={"color": color, "dash": dash})


def histogram_figure(bins: pd.DataFrame, cutoff: Optional[float] = None, log_counts: bool = False,
                     threshold: Optional[float] = None) -> go.Figure:
    """Stack ``queries.histogram`` bins by decision and mark zero, the lowest dropped score and a threshold.

    ``bins`` has ``low``, ``high``, ``decision`` and ``count``; the counts were aggregated in SQL.
    ``threshold`` is the value of a threshold rule, drawn when given.
    """
    figure = go.Figure()
    for decision in ("keep", "drop"):
        part = bins[bins["decision"] == decision]
        figure.add_bar(x=(part["low"] + part["high"]) / 2, y=part["count"], width=part["high"] - part["low"],
                       name="dropped" if decision == "drop" else "kept", marker_color=DECISION_COLORS[decision],
                       customdata=part[["low", "high"]].to_numpy(),
                       hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y} samples<extra></extra>")
    figure.update_layout(barmode="stack", bargap=0)
    _marker_line(figure, 0.0, "0: the paper's rule drops all to the right", "#444", "dot")
    if cutoff is not None:
        _marker_line(figure, cutoff, "lowest dropped score", DECISION_COLORS["drop"], "dash")
    if threshold is not None:
        _marker_line(figure, threshold, f"rule threshold {threshold:g}", "#ff7f0e", "dashdot")
    if log_counts:
        figure.update_yaxes(type="log")
    return _layout(figure, "Influence scores (right = unfavorable)", "influence score", "samples")


def per_class_figure(table: pd.DataFrame, class_cap: Optional[float]) -> go.Figure:
    """Bar the share of each class the drop set removes, with the per-class cap as a line."""
    figure = go.Figure()
    figure.add_bar(x=table["Class"], y=table["Share dropped"], name="share dropped",
                   marker_color=DECISION_COLORS["drop"], customdata=table[["Dropped", "Samples"]].to_numpy(),
                   hovertemplate="class %{x}: %{customdata[0]} of %{customdata[1]} dropped<extra></extra>")
    if "Flipped labels" in table:
        caught = table["Flipped labels dropped"] / table["Samples"].clip(lower=1)
        figure.add_bar(x=table["Class"], y=caught, name="flipped labels dropped",
                       marker_color="#9467bd")
    if class_cap is not None and class_cap < 1:
        figure.add_hline(y=class_cap, line_dash="dash", line_color="#444",
                         annotation_text=f"class cap {class_cap:.0%}", annotation_position="top left")
    figure.update_layout(barmode="group")
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    figure.update_xaxes(type="category")
    return _layout(figure, "Share of each class dropped", "class", "share of the class")


def error_by_class_figure(errors: pd.DataFrame, split: str = "test") -> go.Figure:
    """Group ``app_compare.per_class_errors`` rows into bars per class, one color per round."""
    figure = go.Figure()
    for round_name, part in errors.groupby("Round", sort=True):
        figure.add_bar(x=part["Class"], y=part["Error"], name=round_name,
                       marker_color=ROUND_COLORS.get(round_name), customdata=part[["Errors", "Samples"]].to_numpy(),
                       hovertemplate="class %{x}: %{customdata[0]} of %{customdata[1]} wrong<extra></extra>")
    figure.update_layout(barmode="group")
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    figure.update_xaxes(type="category")
    return _layout(figure, f"{split.capitalize()} error per class", "class", f"{split} error")


def error_overall_figure(result: dict) -> go.Figure:
    """Bar both rounds' overall error with whiskers of two binomial standard errors."""
    figure = go.Figure()
    for round_name, error, se, n_train in (("Round 1", result["error_1"], result["se_1"], result["n_train_1"]),
                                           ("Round 2", result["error_2"], result["se_2"], result["n_train_2"])):
        figure.add_bar(x=[round_name], y=[error], name=round_name, marker_color=ROUND_COLORS[round_name],
                       error_y={"type": "data", "array": [2 * se]},
                       hovertemplate=f"{round_name} ({n_train:,} training samples): %{{y:.2%}}<extra></extra>")
    figure.update_yaxes(tickformat=".1%", rangemode="tozero")
    figure.update_layout(showlegend=False)
    return _layout(figure, f"Overall {result['split']} error", "", f"{result['split']} error")


def residual_figure(curves: pd.DataFrame, tolerance=None) -> go.Figure:
    """Line each solve's relative residual against its step on a log axis, with the tolerance."""
    figure = go.Figure()
    for half, part in curves.groupby("Half", sort=True):
        figure.add_scatter(x=part["Step"], y=part["Residual"], mode="lines", name=half)
    if tolerance:
        figure.add_hline(y=tolerance, line_dash="dash", line_color="#444",
                         annotation_text=f"tolerance {tolerance:g}", annotation_position="bottom left")
    figure.update_yaxes(type="log", exponentformat="e")
    return _layout(figure, "Solver convergence", "step", "relative residual")


def curves_figure(curves: pd.DataFrame, column: str, title: str) -> go.Figure:
    """Line ``column`` (``loss`` or ``accuracy``) against epoch, one line per round."""
    figure = go.Figure()
    for round_name, part in curves.groupby("Round", sort=True):
        figure.add_scatter(x=part["epoch"], y=part[column], mode="lines+markers", name=round_name,
                           line_color=ROUND_COLORS.get(round_name))
    epochs = int(curves["epoch"].max()) if len(curves) else 1
    figure.update_xaxes(tick0=1, dtick=max(1, math.ceil(epochs / 10)))
    return _layout(figure, title, "epoch", column)
