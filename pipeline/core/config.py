"""params.yaml -> one dataclass per stage section.

Stage = params section = module = CLI command. Each stage reads `base` plus its own section;
unknown keys are an error so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import InputError

MEAD_EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


@dataclass(frozen=True)
class BaseParams:
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 only on CUDA or a CPU with native bf16) | fp32 | bf16 (pipeline.core.precision)
    fps: float = 25.0
    sample_rate: int = 16000
    workers: int = 2  # local Dask workers (processes, one thread each)
    scheduler_address: str | None = None  # a running Dask scheduler; else DASK_SCHEDULER_ADDRESS; else local
    processes: int = 1  # training ranks: > 1 runs each training stage under torchrun (DDP; gloo on CPU, nccl on GPU)


@dataclass(frozen=True)
class CorpusParams:
    source: str = "builtin"  # builtin | mead
    mead_root: str | None = None
    size: int = 128
    train_actors: int = 8
    test_actors: int = 4
    train_sentences: int = 3
    test_sentences: int = 2
    emotions: tuple[str, ...] = MEAD_EMOTIONS
    levels: tuple[int, ...] = (1, 3)
    counterfactuals: int = 1  # other-sentence renders per training clip
    blink_rate: float = 0.3  # blinks per second
    head_speech_coupling: float = 1.0  # head nods on stressed syllables (corpus.tracks.speech_nods); 0 = sway only
    chunk_frames: int = 16
    shard_frames: int = 512
    mead_actors: tuple[str, ...] = ()  # empty = every actor found
    mead_test_actors: tuple[str, ...] = ()
    mead_max_clips_per_emotion: int = 0  # 0 = all


@dataclass(frozen=True)
class WideCorpusParams:
    source: str = "builtin"  # builtin | lrw
    lrw_root: str | None = None
    lrw_words: tuple[str, ...] = ()  # empty = every word found
    lrw_max_clips_per_word: int = 0  # per split; 0 = all
    size: int = 128
    train_identities: int = 240
    test_identities: int = 24
    clips_per_identity: int = 9
    test_clips_per_identity: int = 4
    max_frames: int = 29  # frames kept of each utterance (LRW's clip length); 0 = the whole phrase
    train_phrases: int = 2500
    test_phrases: int = 120
    test_voice_share: float = 0.15
    emotions: tuple[str, ...] = MEAD_EMOTIONS
    emotion_share: float = 0.2
    levels: tuple[int, ...] = (1, 2, 3)
    blink_rate: float = 0.3
    head_speech_coupling: float = 1.0
    chunk_frames: int = 16
    shard_frames: int = 512


@dataclass(frozen=True)
class AudioFeaturesParams:
    mel_step: int = 16  # mel frames per video frame window (Wav2Lip: 0.2 s)
    # STFT edge padding: reflect = librosa 0.7, what the released Wav2Lip/SyncNet were trained with;
    # constant = what the official code computes on librosa >= 0.10 (the golden arrays). Edge columns only.
    mel_pad_mode: str = "reflect"
    chunk_frames: int = 256
    shard_frames: int = 8192


@dataclass(frozen=True)
class ProsodyParams:
    """Pitch and loudness tracks per video frame and each speaker's voice baseline (pipeline.audio.prosody)."""

    chunk_frames: int = 1024
    shard_frames: int = 16384


@dataclass(frozen=True)
class TrainFommParams:
    pretrained: str | None = None  # official FOMM checkpoint (vox-cpk.pth.tar): import it instead of training
    pretrain_wide: bool = True  # the wide set's training identities join the corpus's (identity breadth)
    vgg19: str | None = None  # torchvision VGG19 weights file: perceptual loss; unset = multi-scale L1
    preset: str = "slim"  # slim | vox256 (FommConfig preset), then `model` overrides
    image_size: int = 128
    num_kp: int = 15
    model: dict = dataclasses.field(default_factory=dict)  # FommConfig.to_dict() overrides
    batch_size: int = 8
    steps: int = 3342  # the budget (total, resumed steps included); max_minutes is a guard
    max_minutes: float = 90.0  # wall-clock budget of one run (0 = none)
    lr: float = 2.0e-4
    reconstruction_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    reconstruction_weight: float = 10.0
    equivariance_value_weight: float = 10.0
    equivariance_jacobian_weight: float = 10.0
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5
    cross_clip: float = 0.5  # share of pairs whose source is another clip of the driving frame's actor
    part_weight: float = 0.0  # reconstruction loss: extra weight on the brows/eyes and mouth boxes (landmarks)
    landmark_anchors: float = 10.0  # weight of pinning keypoints 0-9 to brow/eyelid/mouth landmarks
    landmark_flow: float = 20.0  # weight of the flow-at-landmarks loss (corpus landmarks; MEAD: none)
    augment_flip: bool = True  # mirror both frames of a pair (FOMM's augmentation)
    augment_jitter: float = 0.1  # brightness/contrast/saturation/hue jitter of a pair (0 = off)
    gan_weight: float = 1.0  # 0 = no discriminator
    feature_matching_weight: float = 10.0
    gan_start: int = 2215  # step at which the discriminator joins (before it: untouched, no adversarial terms)
    resume: bool = False  # continue from the existing output checkpoint
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores). 1 on a busy, shared machine


@dataclass(frozen=True)
class KeypointsParams:
    batch_size: int = 64
    task_frames: int = 2048  # frames per Dask task (the model is loaded once per task)
    chunk_frames: int = 256
    shard_frames: int = 16384
    # more frame stores after the corpus: all pseudo clips, the wide set
    extra_frames: tuple[str, ...] = ("data/pseudo/frames.zarr", "data/wide/frames.zarr")
    report_clips: int = 24  # held-out clips reconstructed for the report (0 = all)
    probe_stride: int = 2  # every n-th frame of the real clips feeds the probes
    # ridge penalties (standardised features) tried; one picked by leave-one-actor-out CV on training actors
    probe_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    mouth_open_param: str = "jaw_open"  # render_params column the mouth-opening probe predicts


@dataclass(frozen=True)
class TrainSyncnetParams:
    pretrained: str | None = None  # official lipsync_expert.pth: import it instead of training
    pretrain_wide: bool = True  # the wide set's training clips join the corpus's (LRS2's role)
    width: float = 0.25  # channel multiplier of SyncNet_color (1.0 = the official layout)
    batch_size: int = 32  # windows per step
    windows_per_clip: int = 8  # windows drawn from each clip; every in-clip pairing is an example
    steps: int = 2000  # the budget; max_minutes is only a guard
    max_minutes: float = 25.0  # wall-clock budget of one run (0 = none)
    lr: float = 1.0e-3
    negative_min_shift: int = 1  # off-sync windows take audio at least this many frames away (Wav2Lip: 1)
    contrastive_weight: float = 1.0  # in-clip ranking loss beside BCE (0 = Wav2Lip's BCE alone, which can stall)
    contrastive_temperature: float = 0.1  # softmax temperature of that ranking over cosines
    own_set_steps: int = 400  # with pretrain_wide: steps on the corpus alone before the wide set joins
    eval_windows: int = 2000  # held-out windows for the in-sync / off-sync accuracy
    eval_offsets: int = 2  # known shifts per held-out clip for the offset-recovery test
    max_eval_offset: int = 10  # shifts drawn from [-max, max] frames
    resume: bool = False
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 0  # torch threads while training; 0 = leave torch's default
    seed_offset: int = 0  # training seed = base.seed + seed_offset


@dataclass(frozen=True)
class TrainSyncScorerParams(TrainSyncnetParams):
    """A second SyncNet_color, trained from another seed, that scores pseudo clips: Wav2Lip learns to please
    the expert it trains against, so that expert's confidence on its own output is biased (the paper
    filters with SyncNet, a model Wav2Lip never saw)."""

    steps: int = 1300
    max_minutes: float = 25.0
    seed_offset: int = 1


@dataclass(frozen=True)
class TrainWav2lipParams:
    pretrained: str | None = None  # official wav2lip.pth / wav2lip_gan.pth: import it instead of training
    pretrain_wide: bool = True  # the wide set's training clips join the corpus's (LRS2's role)
    width: float = 0.25  # channel multiplier of the generator (1.0 = the official layout)
    batch_size: int = 8  # 5-frame windows per step
    steps: int = 1000
    max_minutes: float = 25.0
    lr: float = 1.0e-3
    sync_weight: float = 0.03  # expert sync loss weight (Wav2Lip: 0.03 once the expert loss is low)
    sync_warmup_steps: int = 300  # steps of pure L1 before the sync loss joins
    l1_region: str = "full"  # full (official) | lower: L1 on the lower half only, the part pasted back
    eval_clips: int = 30  # held-out clips for L1/PSNR/sync (0 = all)
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch threads while training; 0 = leave torch's default


@dataclass(frozen=True)
class PseudoPairsParams:
    sentences_per_clip: int = 2  # re-dubs per training clip, counterfactual sentences first (0 = all others)
    frame_extension: str = "pingpong"  # source frames beyond its length: pingpong | loop (Wav2Lip inference)
    paste: str = "lower"  # lower: generated lower half blended into the frame | full: whole face (official)
    batch_size: int = 32
    chunk_frames: int = 16
    shard_frames: int = 512


@dataclass(frozen=True)
class SyncFilterParams:
    weights: str | None = None  # scorer: null = data/models/sync_scorer.pt; or official syncnet_v2.model
    threshold: float = 0.2  # keep clips whose confidence (LSE-C, scorer units) exceeds this
    max_offset: int = 1  # ... and whose AV offset is within +-max_offset frames
    hist_bins: int = 30


@dataclass(frozen=True)
class TrainMotionParams:
    """Motion Reconstruction (paper 3.2, Eq. 1-5): E_e, E_m, D_em trained on keypoints of the quadruples."""

    expression_dim: int = 32  # f_e size
    mouth_dim: int = 16  # f_m size
    hidden: int = 128  # MLP width
    layers: int = 2  # hidden layers per MLP
    relative_input: bool = True  # encoders read (p, j) - (p_neu, j_neu); false = absolute keypoints (the paper's E_e(p, j))
    neutral_to_decoder: bool = False  # D_em's MLP also reads (p_neu, j_neu); false = it only adds its output to them
    feature_norm: str = "batch"  # batch | layer: f_e, f_m standardised per dimension over the batch, or per vector
    use_rec: bool = True  # Table 2 ablations: false = "w/o L_rec" (Eq. 1)
    use_self: bool = True  # false = "w/o L_self" (Eq. 2)
    use_con: bool = True  # false = "w/o L_e/m-con" (Eq. 3 and 4)
    use_filter: bool = True  # train on quadruples whose two pseudo clips sync_filter kept; false = "w/o filter"
    labels: str = "exact"  # pseudo: Wav2Lip clips (the paper) | counterfactual: the corpus's exact renders where they exist
    lambda_e_con: float = 0.03  # Eq. 5 weights of the consistency losses
    lambda_m_con: float = 0.03
    lambda_m_center: float = 1.0  # not in the paper: between-actor share of f_m's variance (not who speaks)
    jacobian_weight: float = 1.0  # weight of Jacobian differences inside ||(p, j)||_2
    batch_size: int = 256  # quadruples per step (each gives 6 frames)
    steps: int = 15000  # the budget; max_minutes is only a guard
    max_minutes: float = 10.0
    lr: float = 1.0e-3
    resume: bool = False
    checkpoint_every: int = 1000
    log_every: int = 100
    threads: int = 1  # torch threads (tiny MLPs gain nothing from more); 0 = torch's default


@dataclass(frozen=True)
class DecomposeParams:
    batch_size: int = 4096  # frames per forward pass
    task_frames: int = 16384  # frames per Dask task (the model is loaded once per worker)
    chunk_frames: int = 1024
    shard_frames: int = 65536


@dataclass(frozen=True)
class MotionReportParams:
    stride: int = 2  # every n-th frame of each clip is measured (reconstruction and probes)
    # ridge penalties (standardised features) tried; one picked by leave-one-actor-out CV on training actors
    probe_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    mouth_open_param: str = "jaw_open"  # render_params column of the mouth-opening probe
    viseme_params: tuple[str, ...] = ("viseme_jaw", "viseme_spread", "viseme_round", "viseme_closure")


@dataclass(frozen=True)
class Table2Params:
    """Paper Table 2 analogue: the Motion Reconstruction ablations retrained and rendered on held-out actors.
    Every other train_motion hyperparameter comes from the train_motion section."""

    # full, no_rec, no_self, no_con, no_filter (one train_motion switch off each) and fomm_keypoints
    # (the target's own keypoints rendered: the renderer's ceiling, no training)
    rows: tuple[str, ...] = ("no_rec", "no_self", "no_con", "no_filter", "full", "fomm_keypoints")
    steps: int = 2000  # train_motion steps per row: the budget, so rows and runs are comparable
    max_minutes: float = 3.0  # wall-clock guard per row only
    clips: int = 16  # held-out clips rendered per row (0 = all), spread over actors and emotions
    frame_stride: int = 4  # every n-th frame of those clips is rendered and scored
    batch_size: int = 4  # frames per renderer call
    sheet_clips: int = 4  # clips shown in the sheet (one middle frame per row and clip)
    dlib_predictor: str | None = None  # as evaluate.dlib_predictor; null = the evaluator's landmark regressor


@dataclass(frozen=True)
class TrainEvaluatorParams:
    """The judges of `evaluate`: an emotion classifier and a 68-point landmark regressor on TRAIN actors' frames."""

    pretrain_wide: bool = True  # the wide set's training identities join the training actors (breadth)
    image_size: int = 64  # side of the faces both nets see (landmarks are still reported in corpus px)
    width: int = 16  # channels of the first conv block (x2, x4, x6 after)
    frame_stride: int = 2  # every n-th frame of each training clip (neighbours are near duplicates)
    eval_stride: int = 1  # every n-th frame of the held-out clips
    batch_size: int = 64
    steps: int = 2400  # the cosine schedule runs over these: a run that reaches them is reproducible
    max_minutes: float = 20.0  # wall-clock guard for the three nets together
    lr: float = 2.0e-3
    shift: int = 3  # random shift in px of image_size (landmark targets move along)
    jitter: float = 0.1  # per-channel gain and brightness offset range (unseen actors' colours)
    soften_fraction: float = 0.5  # share of each batch blurred 2x down/up (generated frames are softer)
    compress_fraction: float = 0.25  # share of each batch JPEG-compressed at quality 20-70 (real videos are)
    balance_classes: bool = True  # each batch draws every emotion alike (the wide set is 80% neutral)
    resume: bool = False  # continue from evaluator.pt's step and optimizer states (same config)
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class TrainAudioParams:
    """EVP's emotion/content disentanglement (EMMN 3.3): content e_c per frame, utterance-level emotion e_e."""

    pretrained: str | None = None  # EVP disentanglement checkpoint (<epoch>_pretrain.pth): import, do not train
    width: float = 0.125  # channel multiplier of EVP's layout (1.0 = the released one; with 256/128 dims, no temporal)
    content_dim: int = 128  # e_c size (EVP: 256)
    emotion_dim: int = 64  # e_e size (EVP: 128)
    emotion_input: str = "mel"  # mel: E_e on the Wav2Lip mel windows (keep pitch, loudness) | mfcc: EVP's E_e on MFCC windows
    emotion_stride: int = 2  # E_e reads every n-th frame's window (windows span 7 frames: n <= 7 hears everything)
    temporal_channels: int = 64  # temporal conv stack over window embeddings before pooling; 0 = EVP's mean
    temporal_layers: int = 3
    prosody_channels: int = 32  # conv branch over pitch/loudness relative to the speaker's voice baseline; 0 = off
    voice_baseline: str = "speaker"  # speaker: each actor's own (prosody stage) | default: the training average
    # for everyone (E_e then hears absolute prosody; the ablation)
    voice_dropout: float = 0.1  # share of training crops heard as if the voice were unknown (default baseline, flagged)
    standardize: bool = True  # MFCC standardised per coefficient (training statistics); false = EVP's raw MFCC
    batch_quads: int = 8  # quads per step (4 clips each)
    segment_frames: int = 24  # frames of content / reconstruction per clip and step
    emotion_frames: int = 40  # frames E_e hears per clip and step (the whole clip at evaluation)
    cross_actor_prob: float = 0.5  # share of quads whose second sentence (the emotion source) is another actor's
    self_weight: float = 1.0  # loss weights; reconstructions are mean |.| in MFCC units
    cross_weight: float = 1.0
    content_weight: float = 1.0
    classification_weight: float = 1.0
    lr: float = 1.0e-3
    steps: int = 1000  # the budget; max_minutes is only a guard
    max_minutes: float = 40.0
    bn_recalibration_batches: int = 30  # training batches whose exact BN statistics replace the running ones
    eval_quads: int = 64  # held-out quads for the reconstruction errors
    probe_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)  # linear-probe penalties (leave-one-actor-out)
    resume: bool = False
    checkpoint_every: int = 200
    log_every: int = 10
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class TrainMemoryParams:
    """Stage 1 (paper Eq. 6-14): E_i, Mouth Decoder D_m and the Motion Memory-Net on the training actors' clips."""

    variant: str = "emmn"  # emmn | baseline (ablation 1: no memory, no decomposition) | mmn (ablation 2: EAMM-style)
    slots: int = 64  # S, slots of each memory
    temperature: float = 0.1  # tau of the cosine softmax (Eq. 7, 10); 1 = the printed formula (near-uniform)
    read_temperature: float | None = 0.05  # tau of Eq. 10 at inference; None = temperature
    balance_query: bool = True  # unit-normalise f^_m and e_e before concatenating them into the Eq. 10 query
    mouth_from_a2m_only: bool = True  # emmn: f^_m reaches the memory and D_em as a constant (D_m learns from Eq. 6 only)
    temporal_expression: bool = True  # emmn: D_t adds a per-frame residual to the memory's read (head motion)
    pretrain_wide: bool = True  # every step also trains on a batch of wide-set windows (emmn: Audio2Mouth and D_t)
    tune_content: bool = False  # fine-tune a copy of the content encoder E_c with D_m (~15x the step time on CPU)
    lambda_exp_mem: float = 1.0  # Eq. 14 weights
    lambda_align: float = 1.0
    lambda_pj: float = 1.0
    lambda_expression: float = 1.0  # D_t's residual loss (ours)
    window: int = 32  # T: consecutive frames per training window (e_e is pooled over them)
    cross_actor_emotion: float = 0.5  # share of training windows whose e_e is another actor's same emotion + level
    batch_size: int = 16  # windows per step
    steps: int = 5000  # the budget; max_minutes is only a guard
    max_minutes: float = 15.0  # wall-clock budget
    lr: float = 1.0e-3
    identity_dim: int = 64  # f_i size
    identity_size: int = 64  # E_i reads the reference image at this side
    identity_channels: tuple[int, ...] = (16, 32, 64, 64)  # E_i: one stride-2 conv per entry
    hidden: int = 128  # D_m width
    decoder_blocks: int = 3  # D_m residual temporal conv blocks
    kernel: int = 5  # D_m temporal kernel (odd): context of blocks * (kernel // 2) frames each side
    latent_dim: int = 16  # ablations: D_m output size (emmn uses motion.pt's mouth_dim)
    mmn_keypoints: int = 3  # mmn: upper-face keypoints the expression memory stores
    eval_clips: int = 0  # held-out clips scored in memory.json (0 = all); as many training clips for comparison
    resume: bool = False  # continue from the checkpoint's step and optimizer state (same config)
    checkpoint_every: int = 500
    log_every: int = 20
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class PretrainMouthParams:
    """Audio2Mouth pre-training (paper §4.1, LRW's role): E_c with E_i and D_m on L_a2m (Eq. 6), wide set + corpus.
    E_i and D_m take train_memory's sizes (identity_*, hidden, decoder_blocks, kernel)."""

    corpus_share: float = 0.5  # share of steps whose batch comes from the corpus's training actors (else the wide set)
    batch_size: int = 16  # windows per step
    window: int = 32  # consecutive frames per window
    steps: int = 1000  # the budget; max_minutes is only a guard
    max_minutes: float = 15.0
    lr: float = 1.0e-3
    resume: bool = False
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class FinetuneRenderParams:
    """Stage 2 (paper Eq. 15): the FOMM renderer fine-tuned on frames rendered from EmmnNet's keypoints."""

    vgg19: str | None = None  # torchvision VGG19 weights: Eq. 15 on VGG features; unset = multi-scale L1 on pixels
    train_generator: bool = False  # fine-tune the image generator (encoder, decoder, skip gate): blurs under L1
    train_dense_motion: bool = True  # fine-tune the flow estimator
    scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)  # image pyramid the loss is summed over (FOMM's)
    batch_size: int = 8
    steps: int = 0  # the budget; max_minutes is only a guard
    max_minutes: float = 15.0  # wall-clock budget
    lr: float = 1.0e-4
    eval_clips: int = 4  # held-out clips rendered before and after fine-tuning (0 = all)
    # share of training frames driven by E_k's keypoints of the real frame (FOMM's own task) instead of EmmnNet's:
    # keeps the flow answering keypoint motion where predicted keypoints disagree with the frame
    real_keypoint_share: float = 0.0
    # > 0: fomm.pt's multi-scale discriminator (trained by train_fomm's GAN; fresh if it has none) joins: LSGAN and
    # feature-matching terms beside Eq. 15, weighted relative to it (FOMM's 10:1:10 is 1 : 0.1 : 1 here)
    gan_weight: float = 0.0
    feature_matching_weight: float = 1.0
    resume: bool = False  # continue from emmn_render.pt's step and optimizer states (same config)
    checkpoint_every: int = 200
    log_every: int = 10
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class GenerateParams:
    """Inference: `emmn generate` on a photo, and the generate stage over the held-out clips."""

    # rows of data/outputs: ground_truth, static, wav2lip_only, emmn, baseline, mmn
    rows: tuple[str, ...] = ("ground_truth", "static", "wav2lip_only", "baseline", "mmn", "emmn")
    # EmmnNet checkpoints of the ablation rows (train_memory with another `variant`); a row whose file is
    # missing is skipped and reported
    variant_models: dict = dataclasses.field(
        default_factory=lambda: {"baseline": "data/models/emmn_baseline.pt", "mmn": "data/models/emmn_mmn.pt"})
    wav2lip_paste: str = "lower"  # wav2lip_only row: lower | full (as pseudo_pairs.paste)
    filter: bool = True  # one-euro filter on (p^, j^) before rendering (paper 3.5)
    filter_min_cutoff: float = 1.0  # Hz
    filter_beta: float = 0.5
    filter_d_cutoff: float = 1.0  # Hz
    crop_enlarge: float = 1.4  # photo: detector box -> crop side (measured on the corpus frames: 1.39)
    crop_shift_down: float = 0.12  # photo: crop centre below the box centre, in box heights (corpus: 0.12)
    feather: float = 0.12  # paste-back: soft border, fraction of the crop side
    max_side: int = 1280  # photo scaled down to this longer side
    min_seconds: float = 0.2  # shorter audio is refused
    silence_dbfs: float = -55.0  # audio with a lower RMS level is refused as silent
    block_frames: int = 250  # frames per block (memory bound for long audio; also e_e's pooling span)
    batch_size: int = 4  # frames per generator call (larger batches were slower per frame on CPU)
    crf: int = 18  # H.264 quality
    max_clips: int = 48  # held-out clips per row (0 = all; spread over actors and emotions)
    sheet_actor: str | None = None  # emotions_sheet.png: held-out actor (null = the first)
    sheet_frames: int = 6  # generated frames per emotion in the sheet
    chunk_frames: int = 16
    shard_frames: int = 512


@dataclass(frozen=True)
class EvaluateParams:
    """Table 1: every row of data/outputs/frames.zarr scored against the held-out ground truth."""

    rows: tuple[str, ...] = ("ground_truth", "static", "wav2lip_only", "baseline", "mmn", "emmn")
    sync_weights: str | None = None  # null = data/models/sync_scorer.pt; or the official syncnet_v2.model
    dlib_predictor: str | None = None  # shape_predictor_68_face_landmarks.dat (or auto) for real faces; null = regressor


@dataclass(frozen=True)
class FiguresParams:
    """Fig. 6-style sheet and a side-by-side mp4 of data/outputs/frames.zarr (issue 8, item 4)."""

    # sheet rows / video columns: rows of the outputs, or `reference` (the actor's neutral corpus frame);
    # rows the outputs lack are skipped and named
    sheet_rows: tuple[str, ...] = ("reference", "baseline", "mmn", "emmn", "ground_truth")
    video_columns: tuple[str, ...] = ("reference", "ground_truth", "wav2lip_only", "emmn")
    emotions: tuple[str, ...] = MEAD_EMOTIONS  # sheet columns, in this order
    actor: str | None = None  # held-out actor (null = the first)
    sentence: int | None = None  # its sentence id (null = the one with the most emotions, the first of those)
    level: int = 3  # intensity level shown per emotion; else the highest there is
    moment: str = "mouth"  # mouth: frame of the widest-open real mouth | fraction: the frame at `fraction` of the clip
    fraction: float = 0.5  # relative time (0 first frame, 1 last); also mouth's fallback without landmarks
    video_emotions: tuple[str, ...] = ()  # clips in the mp4, one after another; empty = every sheet emotion
    crf: int = 18  # H.264 quality


@dataclass(frozen=True)
class EmotionCeilingParams:
    """How much emotion the renderer can show at best, beside what the product shows (pipeline.evaluation.emotion_ceiling)."""

    stride: int = 6  # every n-th frame of each held-out clip is judged
    sheet_actor: str | None = None  # held-out actor of the sheet (null = the first)
    sheet_sentence: int | None = None  # its sentence (null = its first held-out sentence)
    read_temperature: float | None = None  # emmn row: Eq. 10's inference tau (null = emmn.pt's own)
    threads: int = 0  # torch threads; 0 = torch's default


@dataclass(frozen=True)
class ReportParams:
    """The results page, data/reports/index.html (pipeline.evaluation.report_page)."""

    embed_videos: bool = True  # the side-by-side mp4s inside the page (playable offline); false: named only


SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "corpus": CorpusParams,
    "wide_corpus": WideCorpusParams,
    "audio_features": AudioFeaturesParams,
    "prosody": ProsodyParams,
    "train_fomm": TrainFommParams,
    "keypoints": KeypointsParams,
    "train_syncnet": TrainSyncnetParams,
    "train_sync_scorer": TrainSyncScorerParams,
    "train_wav2lip": TrainWav2lipParams,
    "pseudo_pairs": PseudoPairsParams,
    "sync_filter": SyncFilterParams,
    "train_motion": TrainMotionParams,
    "decompose": DecomposeParams,
    "motion_report": MotionReportParams,
    "table2": Table2Params,
    "train_evaluator": TrainEvaluatorParams,
    "evaluate": EvaluateParams,
    "train_audio": TrainAudioParams,
    "pretrain_mouth": PretrainMouthParams,
    "train_memory": TrainMemoryParams,
    "finetune_render": FinetuneRenderParams,
    "generate": GenerateParams,
    "figures": FiguresParams,
    "emotion_ceiling": EmotionCeilingParams,
    "report": ReportParams,
}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping of sections at the top level")
    return data


def build_section(cls: type, values: dict | None, *, where: str = "params.yaml", name: str = "") -> Any:
    """Instantiate a params dataclass, converting lists to tuples and refusing unknown keys."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if "bf16" in unknown:  # the per-stage switch of earlier versions: say what replaced it
        raise InputError(where, f"section '{name}': bf16 is gone; set base.precision (auto | fp32 | bf16) instead")
    if unknown:
        raise InputError(where, f"section '{name}': unknown key(s) {unknown}; known: {sorted(names)}")
    for key, value in values.items():
        if isinstance(value, list) and "tuple" in str(hints[key]):
            values[key] = tuple(value)
    return cls(**values)


def load_section(name: str, path: str | Path = "params.yaml") -> Any:
    data = read_yaml(path)
    return build_section(SECTIONS[name], data.get(name), where=str(path), name=name)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay a profile onto params: nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def as_dict(params: Any) -> dict:
    """A params dataclass as plain JSON-able data (for store attributes and checkpoints)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(params).items()}


# knobs that change how a run goes, never what it produces: in no stage's DVC params (tests/dvc_closure.py) and
# not recorded in outputs, so a run with other workers or another scheduler writes the same bytes
RUN_ONLY = frozenset({"threads", "log_every", "checkpoint_every", "max_minutes", "resume", "workers",
                      "scheduler_address"})


def recorded_params(stage: str, base: BaseParams, p: Any) -> dict[str, dict]:
    """`{"base": ..., stage: ...}` as a per-clip store's root attributes record them: run-only knobs left out
    (and `base.processes`, which only training reads)."""
    return {"base": {k: v for k, v in as_dict(base).items() if k not in RUN_ONLY | {"processes"}},
            stage: {k: v for k, v in as_dict(p).items() if k not in RUN_ONLY}}


def with_field(params: Any, **changes: Any) -> Any:
    return dataclasses.replace(params, **changes)


__all__ = [
    "AudioFeaturesParams", "BaseParams", "ProsodyParams", "CorpusParams", "WideCorpusParams", "MEAD_EMOTIONS", "SECTIONS",
    "as_dict", "build_section", "deep_merge", "load_section", "read_yaml", "with_field",
    "TrainFommParams", "KeypointsParams",
    "TrainSyncnetParams", "TrainSyncScorerParams", "TrainWav2lipParams", "PseudoPairsParams", "SyncFilterParams",
    "TrainMotionParams", "DecomposeParams", "MotionReportParams", "Table2Params", "TrainEvaluatorParams", "EvaluateParams",
    "TrainAudioParams", "PretrainMouthParams", "TrainMemoryParams", "FinetuneRenderParams", "GenerateParams",
    "FiguresParams", "EmotionCeilingParams",
]
