"""Notebook support: parameters, results JSON, plots and widgets. Notebooks call these; nothing here computes."""
