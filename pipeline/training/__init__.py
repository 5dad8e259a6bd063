"""The training loop shared by every training stage: device and seeds, per-step generators, the loss log,
checkpoints with optimizer state (resume), step/minute budgets and progress (`loop`); `fit`, the one skeleton every
trainer runs through (fomm, syncnet, sync scorer, wav2lip, motion, audio, evaluator, memory, stage-2 renderer):
all of them resume from their own checkpoint.

Serves train_fomm, train_syncnet, train_sync_scorer, train_wav2lip, train_evaluator, train_motion, train_audio,
train_memory (x3), finetune_render, table2.
"""
