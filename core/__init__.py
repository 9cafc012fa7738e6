"""Data dropout engine: datasets, models, training and influence scoring.

Pure PyTorch, NumPy and scikit-learn. Nothing here imports Streamlit or DuckDB, so a
researcher can use every part from a notebook. Long operations report progress through an
optional ``progress(stage, step, total, message)`` callback.
"""
