"""Analyses: the scan and one module per study; they read through `linker_nb.io` and never load two models."""
