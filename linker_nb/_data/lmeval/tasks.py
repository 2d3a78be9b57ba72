"""lm-eval `custom_dataset` hooks of the bundled tasks (resolved by the YAML files' `!function tasks.<name>`)."""
from linker_nb.io.task_data import bundled_dataset


def pydoc_continuation(**metadata):
    return bundled_dataset("linker_pydoc_continuation", **metadata)


def builtin_docstring(**metadata):
    return bundled_dataset("linker_builtin_docstring", **metadata)
