"""Data Dropout Curator, the application layer: workspace and DuckDB store, jobs, export, command line."""

__version__ = "0.1.0"
