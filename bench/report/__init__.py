"""The report: tables, plots, training curves and comparisons from results files, rendered to
self-contained HTML and Markdown. It reads result files only and never re-runs a model."""
