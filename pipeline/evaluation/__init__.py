"""Paper 4: the metrics (PSNR, SSIM, M-LMD, F-LMD, sync confidence, LSE-D, emotion accuracy), Table 1 and
Table 2, the emotion ceiling, figures.

Stages: evaluate, table2, emotion_ceiling, figures.
"""
