"""Plotly figures of the denoising pages: PSNR per test image for the noisy input and both rounds."""

import pandas as pd
import plotly.graph_objects as go

#: Bar color of each column of ``denoise_queries.psnr_table``; the rounds match the classification charts.
PSNR_COLORS = {"noisy": "#bab0ac", "round 1": "#4c78a8", "round 2": "#f58518"}


def psnr_figure(table: pd.DataFrame) -> go.Figure:
    """Group the PSNR of each image (and the average) into bars, one color per input or round.

    ``table`` is ``denoise_queries.psnr_table``: an ``image`` column and one column per round present.
    """
    figure = go.Figure()
    for column, color in PSNR_COLORS.items():
        if column in table:
            figure.add_bar(x=table["image"], y=table[column], name=column, marker_color=color,
                           hovertemplate=f"%{{x}}, {column}: %{{y:.2f}} dB<extra></extra>")
    low = float(table.drop(columns="image").min().min()) if len(table) else 0.0
    figure.update_yaxes(range=[max(0.0, low - 2.0), None])
    figure.update_layout(barmode="group", title="Test PSNR per image (higher is better)", xaxis_title="image",
                         yaxis_title="PSNR (dB)", legend_title_text="", margin={"l": 10, "r": 10, "t": 50, "b": 10},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
                         height=400)
    return figure
