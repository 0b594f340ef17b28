"""Unsupervised domain adaptation (DACS): EMA teacher, ClassMix, confidence-weighted pseudo-labels.

Framework-free pieces over tensors and a ``torch.nn.Module``; the Lightning task in
``training/adaptation.py`` decides when to call them.
"""
