"""``python -m lightning_fedmut``: the ``lightning-fedmut`` command."""

from lightning_fedmut.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
