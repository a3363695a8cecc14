"""fourm: any-to-any multimodal masked modeling in PyTorch."""
__version__ = "0.1.0"
