"""Internal helpers: argument checks, seeds, quiet Lightning Trainers."""
