"""Pareto fronts, tables, plots and importances from finished searches."""
