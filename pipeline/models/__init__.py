"""Neural network modules of the EMMN pipeline (FOMM, Wav2Lip, SyncNet, motion and memory networks)."""
