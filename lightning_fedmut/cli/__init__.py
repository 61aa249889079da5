"""The ``lightning-fedmut`` command: ``fit``, ``validate``, ``test``, ``demo``, ``sweep`` and ``benchmark``.

``lightning-fedmut fit`` federates any LightningModule (``--model`` by class path), built on jsonargparse
like LightningCLI: ``--config run.yaml``, ``--print_config``, and every flag in the ``--key=value`` form
that ``wandb agent`` passes. ``lightning-fedmut validate`` and ``test`` evaluate a saved global model (the same
flags, plus ``--ckpt_path``) on the server's data and, with ``--per_client``, on every client's.
``lightning-fedmut demo`` compares FedMut with FedAvg on the bundled digits in about 45 s on two CPU cores. ``lightning-fedmut sweep FILE`` runs a W&B sweep file's configurations locally, as
offline W&B runs of one group. ``lightning-fedmut benchmark CONFIG`` runs a table of methods x partitions x
seeds, resumably, and writes it in the FedMut paper's form. Argument errors print one line and exit with code 2.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from lightning_fedmut.cli._parser import ARGUMENT_ERROR, CLIError

__all__ = ["CLIError", "console", "main"]

COMMANDS = {
    "fit": "federate a LightningModule (flags or --config YAML; --print_config shows the full config)",
    "validate": "evaluate a saved global model on the validation data (--per_client: on every client's too)",
    "test": "the same with Trainer.test on the test data (a DataModule's test_dataloader)",
    "demo": "FedMut vs FedAvg on the bundled digits: a per-round table, two plots, W&B runs",
    "sweep": "run a W&B sweep file's grid or random configurations locally, as offline W&B runs",
    "benchmark": "methods x partitions x seeds from one file, resumable: the paper's table, CSV, curves",
}

USAGE = "usage: lightning-fedmut {fit,validate,test,demo,sweep,benchmark} [options]   (lightning-fedmut COMMAND --help)\n\ncommands:\n" + "\n".join(
    f"  {name:<9} {text}" for name, text in COMMANDS.items()
)


def console() -> int:
    """The ``lightning-fedmut`` program (and ``python -m lightning_fedmut[.cli]``): :func:`main`, then a quick exit.

    When the command is done (its loggers finished, its files written and closed, its output flushed), what is
    still alive is frozen out of the garbage collector's reach (``gc.freeze``), so the interpreter's exit does
    not trace the objects torch and Lightning hold: about 1 s less for every command on two cores. The memory
    goes back with the process; ``atexit`` handlers and ``weakref.finalize`` clean-ups still run.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lightning-fedmut`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Examples:
        >>> main(["nope"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else ARGUMENT_ERROR
    if argv[0] == "--version":
        from lightning_fedmut import __version__

        print(f"lightning-fedmut {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    prog = f"lightning-fedmut {command}"
    try:
        if command == "fit":
            from lightning_fedmut.cli.fit import fit_main

            return fit_main(rest)
        if command in ("validate", "test"):
            from lightning_fedmut.cli.evaluate import evaluate_main

            return evaluate_main(rest, stage="validate" if command == "validate" else "test")
        if command == "demo":
            from lightning_fedmut.cli.demo import demo_main

            return demo_main(rest)
        if command == "sweep":
            from lightning_fedmut.cli.sweep import sweep_main

            return sweep_main(rest)
        if command == "benchmark":
            from lightning_fedmut.cli.benchmark import benchmark_main

            return benchmark_main(rest)
        raise CLIError(f"unknown command {command!r}: expected one of {', '.join(COMMANDS)}")
    except CLIError as err:
        if command not in COMMANDS:
            prog = "lightning-fedmut"
        print(f"{prog}: error: {err.message}", file=sys.stderr)
        return err.code
    except SystemExit as exit_:  # --help and --print_config exit through the parser
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
