"""Paper 3.2 pseudo labels: the SyncNet lip-sync expert and scorer, Wav2Lip, re-dubbed pseudo clips v^{i,b},
the syncnet_python-style sync filter and confidence.

Stages: train_syncnet, train_sync_scorer, train_wav2lip, pseudo_pairs, sync_filter, sync-score.
"""
