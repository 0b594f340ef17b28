"""One module per ``crossearth-gate`` subcommand: its options (``register``) and what it does (``run``).

Each module also names which of its options are output FILES (``OUT_FILES``; every other ``--out`` is a
folder), so ``cli.py`` can check every output before any work. The modules import only argparse at the
top: the work's imports happen in ``run``, so ``--help`` stays instant.
"""

from __future__ import annotations

from types import ModuleType

from . import benchmark, demo, export, fit, predict, report, study, table, weights

COMMANDS: dict[str, ModuleType] = {
    module.NAME: module for module in (fit, demo, predict, weights, report, table, export, benchmark, study)
}
"""The subcommands in the order ``--help`` lists them."""
