"""Paper 3.4 (Eq. 6-14): Audio2Mouth and the Motion Memory-Net trained on the decomposed motion, with the
baseline and mmn ablations.

Stages: train_memory, train_memory_baseline, train_memory_mmn.
"""
