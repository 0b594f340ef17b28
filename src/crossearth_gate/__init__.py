"""CrossEarth-Gate: Fisher-guided adaptive tuning for cross-domain remote-sensing segmentation."""

__version__ = "0.1.0"
