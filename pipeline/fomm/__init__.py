"""FOMM (paper 3.2 E_k, 3.5 renderer): training with its losses and discriminator, checkpoint I/O, keypoint
extraction into the keypoint store (`keypoints`), the held-out reconstruction report.

Stages: train_fomm, keypoints.
"""
