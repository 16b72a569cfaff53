"""fsds: few-shot defect segmentation with Normal Background Regularization and Crop-and-Paste."""

__version__ = "0.1.0"
