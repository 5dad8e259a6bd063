"""Paper 3.3 (and EVP): audio front-ends (Wav2Lip mel, MFCC windows), prosody and voice baselines, DTW alignment,
the content/emotion audio encoders' training and report.

Stages: audio_features, prosody, train_audio.
"""
