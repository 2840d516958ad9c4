"""MONAI dictionary transforms that turn a T1 scan into the hippocampal ROI the networks see, and back."""
