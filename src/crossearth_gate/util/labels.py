"""The label conventions every part shares: data writes them, losses, heads and metrics skip them."""

IGNORE_INDEX = 255
"""A mask value that belongs to no class: unlabelled pixels, crop padding, pixels without a pseudo-label.
Masks are stored as uint8, so the largest value is the one no class can take (mmsegmentation's choice)."""
