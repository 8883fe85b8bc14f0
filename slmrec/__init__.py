"""SLMRec: sequential recommendation with small language models distilled from large ones."""

__version__ = "0.1.0"
