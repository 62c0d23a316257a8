"""waltzlit: WaltzRL (arXiv 2510.08240) on PyTorch Lightning."""

__version__ = "0.1.0"
