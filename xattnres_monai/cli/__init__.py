"""The command-line programs: argument parsing and calls into the library, nothing else.

One module per command, each with ``main(argv=None)`` (wrapped by :func:`~xattnres_monai.utils.files.cli_main`:
bad input ends with ``error: <file>: <problem>`` lines and exit code 2). The documented commands reach them through
entry points that only call ``main`` (command -> program -> library):

- ``python -m xattnres_monai.data.synapse`` -> :mod:`.synapse` -> :mod:`xattnres_monai.data.synapse`
- ``python -m xattnres_monai.data.images`` -> :mod:`.images` -> :mod:`xattnres_monai.data.images`
- ``python -m xattnres_monai.data.prepare`` -> :mod:`.prepare` -> :mod:`xattnres_monai.data.collection` (and
  :mod:`xattnres_monai.data.synapse` for ``--preset synapse``)
- ``python -m xattnres_monai.data.phantoms`` -> :mod:`.phantoms` -> :mod:`xattnres_monai.testing.phantoms`
- ``python -m xattnres_monai.data.image_phantoms`` -> :mod:`.image_phantoms` ->
  :mod:`xattnres_monai.testing.image_phantoms`

No library module imports from this package (tests/test_layout.py checks it).
"""
