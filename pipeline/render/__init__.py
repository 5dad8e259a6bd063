"""Paper 3.5: keypoint smoothing (one-euro filter) and rendering, stage-2 fine-tuning (Eq. 15), photo crop and
paste-back, `emmn generate` and the held-out outputs.

Stages: finetune_render, generate.
"""
