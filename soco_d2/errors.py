"""The error every soco_d2 tool reports as one line: input a user can fix.

A tool (``soco_d2.cli.run_cli``) prints ``error: <message>`` and exits with
status 2 for an :class:`InputError`, without a traceback unless ``--debug``.
Library code raises it (or a subclass, e.g. the checkpoint package's
``WeightsFileError``) where the message alone says what is wrong and how to
fix it; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class InputError(Exception):
    """Bad input a user can fix: a config key, a missing dataset, cache or weights file, an OUTPUT_DIR."""
