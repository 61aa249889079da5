"""``python -m lightning_fedmut``: the ``lightning-fedmut`` command."""

from lightning_fedmut.cli import console

if __name__ == "__main__":
    raise SystemExit(console())
