"""linker-nb: weight-space structure under post-training, one notebook per question.

Modules: checkpoints (find and stream tensors), architectures (names -> blocks), metrics (the scan),
registry (model pairs and the paper's figures), models (device/dtype/loading), corpus and evaluation
(text and LM loss), symmetry, interpolation, aliasing, spectral, plots, widgets, notebook (parameters and
results JSON).
"""
__version__ = "0.1.0"
