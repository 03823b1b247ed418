"""tickhub: a market-data hub. Price sources in, one ordered tick stream out."""

__version__ = "0.1.0"
