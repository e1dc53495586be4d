"""zoomorph: galaxy morphology from images, trained on Galaxy Zoo votes."""

__version__ = "0.1.0"
