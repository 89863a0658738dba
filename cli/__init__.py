"""The ``msenc`` command line: argument parsing over the ``msenc_lib`` stages; no logic of its own.

Installed, this folder is the package ``msenc_cli``; its entry point is :func:`msenc_cli.main.main`.
"""
