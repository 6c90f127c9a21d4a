"""Multi-task evaluation metrics."""

# -- delta_m and helpers (issue 6) --
