"""Config keys of soco_d2.

All new keys live under MODEL.SSL (shared by every method), MODEL.SOCO,
MODEL.DETCON, MODEL.DENSECL, INPUT.SSL, PROPOSALS, SOLVER, DATALOADER and
TEST.PROBE; each is
documented where it is defined below.  Call ``add_pretrain_config(cfg)`` on a
``get_cfg()`` node before ``merge_from_file``.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def _add_ssl_config(cfg: CN) -> None:
    """MODEL.SSL (shared by every method: heads, momentum, temperature, queue),
    INPUT.SSL (views, augmentations) and the SOLVER additions (LARS, warmup-cosine by epochs)."""
    cfg.MODEL.SSL = CN()
    # Projector / predictor MLPs: Linear(in -> HIDDEN) -> norm -> ReLU -> Linear(HIDDEN -> DIM).
    cfg.MODEL.SSL.PROJ_HIDDEN_DIM = 4096
    cfg.MODEL.SSL.PROJ_DIM = 256
    cfg.MODEL.SSL.PRED_HIDDEN_DIM = 4096  # predictor (BYOL-style online branch only); 0 = no predictor
    # Norm of the MLPs' hidden layer: any detectron2 get_norm name ("SyncBN", "BN",
    # "naiveSyncBN") or "" for none (MoCo-v2 / DenseCL heads have no norm).
    cfg.MODEL.SSL.HEAD_NORM = "SyncBN"
    cfg.MODEL.SSL.HEAD_LAST_BIAS = True  # bias on the MLPs' last Linear (SoCo: yes, DetCon: no)
    # Momentum (EMA) target network: tau goes from MOMENTUM to 1.0 by cosine over
    # SOLVER.MAX_ITER ("cosine", BYOL/SoCo/DetCon) or stays at MOMENTUM ("constant", MoCo/DenseCL).
    # tau is a function of the iteration only, so a resumed run continues the schedule.
    cfg.MODEL.SSL.MOMENTUM = 0.99
    cfg.MODEL.SSL.MOMENTUM_SCHEDULE = "cosine"
    cfg.MODEL.SSL.TEMPERATURE = 0.2  # contrastive methods (MoCo-v2, DenseCL, DetCon)
    cfg.MODEL.SSL.QUEUE_SIZE = 65536  # negatives queue (MoCo-v2, DenseCL)
    # Shuffle-BN (MoCo-v2, DenseCL): with several processes, the key encoder forwards a
    # random slice of the global batch (permutation broadcast from rank 0) and the outputs
    # are un-shuffled; needed with plain per-process BN, redundant (harmless) with SyncBN.
    cfg.MODEL.SSL.SHUFFLE_BN = True
    # Zero-init the last norm of every residual branch (SoCo, DetCon, BYOL); detectron2 leaves it at 1.
    cfg.MODEL.SSL.ZERO_INIT_RESIDUAL = True
    # Backbone feature used by the image-level and C5 methods (BYOL, MoCo-v2, DenseCL, DetCon C5).
    cfg.MODEL.SSL.FEATURE = "res5"

    cfg.INPUT.SSL = CN()
    # Name of the multi-view mapper in soco_d2.data.SSL_MAPPER_REGISTRY.
    cfg.INPUT.SSL.MAPPER = "ImageLevelMapper"
    # One entry per view: output side in pixels (square views) and how the view is made:
    # "whole" (the whole image resized, aspect not kept), "crop" (random resized crop),
    # "downsample:J" (view J, before flip and colour, resized to this size; SoCo*'s V4).
    cfg.INPUT.SSL.VIEW_SIZES = [224, 224]
    cfg.INPUT.SSL.VIEW_TYPES = ["crop", "crop"]
    cfg.INPUT.SSL.CROP_SCALE = (0.08, 1.0)  # area fraction range of the random resized crop
    cfg.INPUT.SSL.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio range (log-uniform)
    cfg.INPUT.SSL.CROP_ATTEMPTS = 10  # torchvision: 10 tries then a centre crop; DetCon: 1 try
    # When no attempt fits: "center" (torchvision: largest centred crop within CROP_RATIO)
    # or "clip" (DetCon: the last attempt's width/height clipped to the image, random offset).
    cfg.INPUT.SSL.CROP_FALLBACK = "center"
    # image resize ("bilinear", "bicubic"; "nearest" for exact-geometry tests); masks use nearest
    cfg.INPUT.SSL.INTERPOLATION = "bilinear"
    cfg.INPUT.SSL.FLIP_PROB = 0.5
    # Colour: ColorJitter(brightness, contrast, saturation, hue) with probability JITTER_PROB.
    cfg.INPUT.SSL.COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)
    cfg.INPUT.SSL.JITTER_PROB = 0.8
    cfg.INPUT.SSL.GRAYSCALE_PROB = 0.2
    # Per-view probabilities of Gaussian blur (sigma ~ U(BLUR_SIGMA)) and solarisation;
    # a list shorter than the views repeats its last entry ([1.0, 0.1]: V1 1.0, others 0.1).
    cfg.INPUT.SSL.BLUR_PROBS = [1.0, 0.1]
    cfg.INPUT.SSL.BLUR_SIGMA = (0.1, 2.0)
    cfg.INPUT.SSL.SOLARIZE_PROBS = [0.0, 0.2]
    # SoCo's cutout inside boxes: views (indices) it applies to, per-box probability,
    # square area as a fraction of the box area.
    cfg.INPUT.SSL.CUTOUT_VIEWS = []
    cfg.INPUT.SSL.CUTOUT_PROB = 0.5
    cfg.INPUT.SSL.CUTOUT_RATIO = (0.1, 0.3)
    # Where the colour ops (jitter, grayscale, blur, solarize), normalisation and cutout run;
    # the dataloader workers always decode, crop, resize and flip, and draw every random
    # parameter (so the data stream stays a function of seed and sample position):
    # "model": views leave the workers as uint8 and the meta-architecture applies the ops
    #   batched on the training device (soco_d2.data.photometric);
    # "mapper": the workers apply the same implementation and send float32 views;
    # "auto": "model" when MODEL.DEVICE is CUDA, "mapper" otherwise (the choice is logged).
    # Both give the same training batch up to float rounding.
    cfg.INPUT.SSL.PHOTOMETRIC_ON = "auto"
    # Decode JPEGs at 1/2, 1/4 or 1/8 size (PIL's draft) when every view still downsamples its
    # crop window at that size.  Faster on large images; changes pixels slightly (BENCHMARKS.md).
    cfg.INPUT.SSL.JPEG_DRAFT = False
    # Where images are decoded: "mapper" (the workers decode once and cut the views) or
    # "device": the workers read the file and draw the views' geometry, the model decodes
    # JPEGs with torchvision.io.decode_jpeg on its device (nvJPEG on CUDA) and cuts, resizes
    # and flips the views there (other formats are decoded in the workers).  Needs
    # PHOTOMETRIC_ON "model".  Worth it when the workers cannot keep up even with colour on
    # the device; the views are the same up to the decoders' rounding.
    cfg.INPUT.SSL.DECODE_ON = "mapper"

    # Optimiser: "SGD" (detectron2's) or "LARS" (SGD momentum wrapped in layer-wise
    # trust ratios). With LARS_EXCLUDE_1D, biases and norm weights get neither weight
    # decay nor the trust ratio (SoCo, BYOL, DetCon).
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.LARS_ETA = 0.001
    cfg.SOLVER.LARS_EPS = 0.0  # added to the gradient norm in the trust ratio (SoCo uses 1e-8)
    cfg.SOLVER.LARS_EXCLUDE_1D = True
    # Learning rate actually used = BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH_SIZE
    # (0 = use BASE_LR as is).
    cfg.SOLVER.REFERENCE_BATCH_SIZE = 0
    # Epoch-based schedules (> 0 wins over MAX_ITER / WARMUP_ITERS in the yaml, not over a
    # SOLVER.MAX_ITER given on the command line): iterations = EPOCHS * len(dataset) // IMS_PER_BATCH.
    cfg.SOLVER.EPOCHS = 0
    cfg.SOLVER.WARMUP_EPOCHS = 0.0
    # LR_SCHEDULER_NAME "WarmupCosineToEnd": linear warmup from WARMUP_FACTOR * lr over the warmup
    # iterations, then cosine over the *remaining* iterations down to COSINE_END_LR (absolute).
    # COSINE_PER_EPOCH keeps the lr constant within an epoch (DenseCL / MoCo-v2 recipes).
    cfg.SOLVER.COSINE_END_LR = 0.0
    cfg.SOLVER.COSINE_PER_EPOCH = False
    # Stop with a clear message when the loss is NaN/inf (the last good checkpoint is kept).
    cfg.SOLVER.NAN_GUARD = True
    # Iterations per epoch (len(dataset) // IMS_PER_BATCH); filled in by the pretraining setup
    # (soco_d2.engine.pretrain.apply_epoch_schedule), needed by COSINE_PER_EPOCH. 0 = unknown.
    cfg.SOLVER.ITERS_PER_EPOCH = 0
    # Engine: DDP's find_unused_parameters (off: every soco_d2 model gives every trainable
    # parameter a gradient in every step, even when an FPN level gets no box; SoCo's official
    # code sets it), and how often / how smoothed metrics.json and TensorBoard are written
    # (LOG_WINDOW 1 = the raw value of every written iteration; detectron2's default is 20).
    cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS = False
    cfg.SOLVER.LOG_PERIOD = 20
    cfg.SOLVER.LOG_WINDOW = 20
    # Precision of SOLVER.AMP.ENABLED (soco_d2/engine/steps.py): "bfloat16" (no gradient
    # scaler: bf16 keeps float32's exponent range), "float16" (with torch's GradScaler) or
    # "auto": bfloat16 on GPUs that run it natively (Ampere, Hopper and later), float16 on
    # older ones.  On a CPU, autocast always runs bfloat16.  The choice is logged at start-up.
    cfg.SOLVER.AMP.DTYPE = "auto"
    # Gradient accumulation: each optimizer step sums the gradients of ACCUMULATE_STEPS
    # forward/backward passes over equal slices of the step's batch, so every process
    # forwards IMS_PER_BATCH / (processes x ACCUMULATE_STEPS) images at a time.
    # IMS_PER_BATCH stays the batch of one optimizer step: the learning rate, epochs,
    # iterations, momentum (EMA) schedule, checkpoints and the data stream (samples are a
    # function of seed and position) are those of ACCUMULATE_STEPS 1.  Only offered where it
    # gives the step of the whole batch (losses that are means of per-image terms: BYOL,
    # SoCo, DetCon with MODEL.DETCON.CROSS_IMAGE_NEGATIVES False); refused at start-up for
    # MoCo-v2 / DenseCL (their queues are updated by every forward) and DetCon with
    # cross-image negatives (each slice contrasts against its own slice's masks only).
    # BatchNorm (and SyncBN) statistics are computed per slice: with BN the step is close to,
    # not equal to, the whole batch's (GroupNorm, or BN in eval mode, make it exact).
    cfg.SOLVER.ACCUMULATE_STEPS = 1


def _add_dataloader_config(cfg: CN) -> None:
    """DATALOADER additions of the pretraining loader (soco_d2.data.build)."""
    # Unreadable images (zero-byte, truncated, corrupt, missing, or skipped by the proposal
    # precompute): each sample that meets one uses the next image of the dataset instead
    # (deterministically, so --resume stays exact) and the file is logged with its path.
    # The run stops, listing them, once more than MAX_BAD_IMAGES *distinct* files were met,
    # counted over all processes and dataloader workers and kept across --resume
    # (soco_d2/data/bad_images.py).  0 = stop at the first; -1 = no limit.
    cfg.DATALOADER.MAX_BAD_IMAGES = 100


def _add_proposals_config(cfg: CN) -> None:
    """PROPOSALS: where the precomputed boxes / masks come from and how they are sampled."""
    cfg.PROPOSALS = CN()
    # Proposal caches written by tools/precompute_proposals.py (one file per dataset:
    # join shards with --merge first); keys are the datasets' image_id.
    cfg.PROPOSALS.BOX_CACHE = ""  # selective-search boxes (SoCo)
    cfg.PROPOSALS.MASK_CACHE = ""  # Felzenszwalb label maps (DetCon)
    # An image of the training set that has no entry in the cache: "error" (default;
    # the cache does not match the dataset) or "whole_image" (use the whole image).
    cfg.PROPOSALS.MISSING = "error"
    # SoCo sampling: K boxes per image per view pair, re-sampling the crops up to
    # MAX_TRIES times while a pair has too few, padding to K by duplicates.
    cfg.PROPOSALS.NUM_PER_VIEW = 4
    cfg.PROPOSALS.MAX_TRIES = 5
    # Jitter of the V1 copies of the boxes (SoCo FPN variants): probability and ratio.
    cfg.PROPOSALS.JITTER_PROB = 0.5
    cfg.PROPOSALS.JITTER_RATIO = 0.1


def _add_soco_config(cfg: CN) -> None:
    """MODEL.SOCO: SoCo_C4 / SoCo_FPN / SoCo* specifics.

    The box head of the FPN variants is detectron2's ``MODEL.ROI_BOX_HEAD``
    (``FastRCNNConvFCHead``, 4conv1fc, the same keys the Mask R-CNN fine-tune uses).
    """
    cfg.MODEL.SOCO = CN()
    # "FPN": RoIAlign on IN_FEATURES (p2..p5) + ROI_BOX_HEAD; "C4": RoIAlign on res4 + res5 + avg pool.
    cfg.MODEL.SOCO.REGION_HEAD = "FPN"
    cfg.MODEL.SOCO.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SOCO.POOLER_RESOLUTION = 7
    cfg.MODEL.SOCO.POOLER_SAMPLING_RATIO = 0  # 0 = adaptive (ceil(roi size / bins)), as torchvision's -1
    cfg.MODEL.SOCO.POOLER_TYPE = "ROIAlignV2"  # aligned=True
    # FPN level of a box: "soco" (official: sqrt(area) in the view's pixels <= 48 -> P2,
    # <= 96 -> P3, <= 192 -> P4, else P5) or "detectron2" (assign_boxes_to_levels, canonical 224 at P4).
    cfg.MODEL.SOCO.LEVEL_ASSIGNMENT = "soco"
    cfg.MODEL.SOCO.LEVEL_THRESHOLDS = [48, 96, 192]
    # Parity option: pool every box on every level and run the head on all of them
    # (the official code's cost, 4x; only the assigned level enters the loss, but the
    # head's BatchNorm then sees all levels' RoIs).
    cfg.MODEL.SOCO.POOL_ALL_LEVELS = False


def _add_detcon_config(cfg: CN) -> None:
    """MODEL.DETCON: DetCon-B / DetCon-S specifics."""
    cfg.MODEL.DETCON = CN()
    cfg.MODEL.DETCON.VARIANT = "B"  # "B": BYOL-style momentum target; "S": SimCLR-style shared encoder
    # Where the masks come from: "fh" (PROPOSALS.MASK_CACHE), "grid" (GRID_SIZE x GRID_SIZE
    # cells of the image), "gt" (instance masks of a labeled dataset, background = one mask).
    cfg.MODEL.DETCON.MASK_SOURCE = "fh"
    cfg.MODEL.DETCON.GRID_SIZE = 5
    cfg.MODEL.DETCON.NUM_MASKS = 16  # sampled per image per view, with replacement
    # Features the masks are pooled from: ["res5"] (the paper, stride 32) or FPN levels
    # ["p2", "p3", "p4", "p5"] (each mask pooled from the level its area selects, SoCo's rule).
    cfg.MODEL.DETCON.IN_FEATURES = ["res5"]
    cfg.MODEL.DETCON.LEVEL_THRESHOLDS = [48, 96, 192]
    cfg.MODEL.DETCON.LOCAL_NEGATIVES = True  # other masks of the same image are negatives
    # Every mask of every other image of the global batch is a negative (the paper; the keys
    # are all-gathered over processes).  False: only the own image's masks (needs
    # LOCAL_NEGATIVES True); the loss is then a mean of per-image terms, needs no gather, and
    # SOLVER.ACCUMULATE_STEPS is exact.  Not a paper setting: fewer negatives per query.
    cfg.MODEL.DETCON.CROSS_IMAGE_NEGATIVES = True


def _add_densecl_config(cfg: CN) -> None:
    """MODEL.DENSECL: DenseCL specifics (queues: MODEL.SSL.QUEUE_SIZE, tau: MODEL.SSL.TEMPERATURE)."""
    cfg.MODEL.DENSECL = CN()
    cfg.MODEL.DENSECL.LOSS_WEIGHT = 0.5  # lambda: (1 - lambda) * global + lambda * dense
    cfg.MODEL.DENSECL.GRID_SIZE = 0  # adaptive-pool the dense head to GRID x GRID; 0 = keep (7x7 at 224)
    # Dense loss weight is 0 (global weight 1) before this iteration (the official warm-up hook; 0 = off).
    cfg.MODEL.DENSECL.WARMUP_ITERS = 0


def _add_probe_config(cfg: CN) -> None:
    """TEST.PROBE: kNN / linear probes of the frozen backbone (soco_d2.evaluation):
    image level (globally pooled IMAGE_FEATURE of labelled image folders) and object
    level (RoIAlign of the ground-truth boxes of detectron2 instance datasets).
    Accuracies are in percent, under the query dataset's name.  Used by the pretraining
    hook (soco_d2/engine/probe_hook.py) and tools/probe_net.py (docs/tools/probe_net.md)."""
    cfg.TEST.PROBE = CN()
    # ENABLED: the pretraining trainer runs the probes on its online backbone after every
    # PERIOD-th iteration (0 = only the last) and after the last one, logging
    # probe/<task>_<metric> to metrics.json and TensorBoard.  tools/probe_net.py ignores both.
    cfg.TEST.PROBE.ENABLED = False
    cfg.TEST.PROBE.PERIOD = 0
    # Image level: labelled image folders, one sub-folder per class; a registered folder
    # dataset (imagenet_train / imagenet_val), "folder:<path>" or a path.  "" = off.
    cfg.TEST.PROBE.IMAGE_MEMORY = ""
    cfg.TEST.PROBE.IMAGE_QUERIES = ""
    # Object level: registered detectron2 instance datasets (every non-crowd box, its
    # category); both must have the same thing_classes.  "" = off.
    cfg.TEST.PROBE.REGION_MEMORY = ""
    cfg.TEST.PROBE.REGION_QUERIES = ""
    # At most this many images of the memory / query set, evenly spaced over the
    # dataset order (so class-sorted folders keep every class); 0 = all.
    cfg.TEST.PROBE.MAX_MEMORY_IMAGES = 0
    cfg.TEST.PROBE.MAX_QUERY_IMAGES = 0
    # Classifiers on the L2-normalised features: "knn" (weighted kNN) and/or "linear".
    cfg.TEST.PROBE.CLASSIFIERS = ["knn", "linear"]
    # Weighted kNN: the K most cosine-similar memory features vote exp(sim / TEMPERATURE)
    # for their class (K > memory size: all vote; similarity ties: lower memory index first;
    # vote ties: lower class index first).
    cfg.TEST.PROBE.K = 20
    cfg.TEST.PROBE.TEMPERATURE = 0.07
    # Linear probe: multinomial logistic regression on the memory features (L2-normalised,
    # then standardised), zero init, full-batch L-BFGS for MAX_ITER iterations, L2 penalty
    # WEIGHT_DECAY / 2 * ||W||^2 on the weights (deterministic; no learning rate to tune).
    cfg.TEST.PROBE.LINEAR = CN()
    cfg.TEST.PROBE.LINEAR.MAX_ITER = 100
    cfg.TEST.PROBE.LINEAR.WEIGHT_DECAY = 1e-4
    # Image level: backbone output (for an FPN also its bottom-up's, e.g. res5) averaged
    # over the image; images resized (shorter side IMAGE_RESIZE) and centre-cropped to IMAGE_CROP.
    cfg.TEST.PROBE.IMAGE_FEATURE = "res5"
    cfg.TEST.PROBE.IMAGE_RESIZE = 256
    cfg.TEST.PROBE.IMAGE_CROP = 224
    # Object level: feature maps the boxes are RoIAligned on, fine to coarse, one channel
    # count: ["res5"], ["res4"] or FPN levels ["p2", "p3", "p4", "p5"]; the R x R bins are
    # averaged.  With several levels each box goes to one level by LEVEL_ASSIGNMENT: "soco"
    # (sqrt(area) in the resized image's pixels <= LEVEL_THRESHOLDS[i] -> level i, else the
    # last) or "detectron2" (assign_boxes_to_levels, canonical 224 at level 4).
    cfg.TEST.PROBE.REGION_FEATURES = ["res5"]
    cfg.TEST.PROBE.LEVEL_ASSIGNMENT = "soco"
    cfg.TEST.PROBE.LEVEL_THRESHOLDS = [48, 96, 192]
    cfg.TEST.PROBE.POOLER_RESOLUTION = 7
    cfg.TEST.PROBE.POOLER_SAMPLING_RATIO = 0  # 0 = adaptive
    cfg.TEST.PROBE.POOLER_TYPE = "ROIAlignV2"
    # Object level: images resized as detectron2's test time (shorter side MIN_SIZE, longer
    # side at most MAX_SIZE); boxes with a side under MIN_BOX_SIZE px after resizing are left out.
    cfg.TEST.PROBE.REGION_MIN_SIZE = 800
    cfg.TEST.PROBE.REGION_MAX_SIZE = 1333
    cfg.TEST.PROBE.MIN_BOX_SIZE = 0.0
    # Feature extraction: images per forward pass per process, data-loading workers per process.
    cfg.TEST.PROBE.BATCH_SIZE = 32
    cfg.TEST.PROBE.NUM_WORKERS = 2


def add_pretrain_config(cfg: CN) -> CN:
    """Add every soco_d2 key (with its default) to a detectron2 config."""
    _add_ssl_config(cfg)
    _add_dataloader_config(cfg)
    _add_proposals_config(cfg)
    _add_soco_config(cfg)
    _add_detcon_config(cfg)
    _add_densecl_config(cfg)
    _add_probe_config(cfg)
    return cfg


def get_pretrain_cfg() -> CN:
    """detectron2's default config plus every soco_d2 key."""
    return add_pretrain_config(get_cfg())
