"""linker-nb: weight-space structure under post-training, one notebook per question.

Layers, bottom up; each imports only the ones below it:

* `linker_nb.io`: references and checkpoints (resolve, stream, pair), architecture records, the model
  registry, building models, the embedded text.
* `linker_nb.analyses`: the scan (kernel, records), and one module per study: granularity (01), boundary (02),
  symmetry (03), interpolation (04), spectral (06), with the LM loss they share.
* `linker_nb.linker`: the LinkerLLM runtime (05): alias + guard, share plans, lazy loader, memory, tables,
  quality.
* `linker_nb.nb`: notebook support: parameters, results JSON, plots, widgets.
"""
__version__ = "0.1.0"
