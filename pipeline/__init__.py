"""journeymap: customer journeys from raw web logs."""

__version__ = "0.1.0"
