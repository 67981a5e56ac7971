"""Configuration of stage 1: anonymization training (identity init, fT / fB inits, minimax).

Loaded by ``python -m anonymization_training --config FILE key=value ...``; ``--help-config``
lists every key with its meaning. One schema serves four tasks (``task``):

==================  =====================================================================
task                what it trains, what it selects on (never a test split)
==================  =====================================================================
utility_pretrain    fT (I3D + classifier) on the proxy action set; best = max validation
                    top-1 on clips carved out of the train list (``data.action_validation_fraction``).
                    testlist01 top-1 of the selected model is reported, never selected on.
identity            fA as an identity (L1 reconstruction) on action frames + privacy images;
                    best = min validation L1 (action val clips' frames + privacy val images).
budget_ssl          fB with SimCLR NT-Xent on privacy train images; best = min validation
                    NT-Xent loss on the privacy val images (carved from train).
minimax             TeD-SPAD Algorithm 1 (or SPAct / the ablations, ``loss.method``) from the
                    three inits above; best by ``eval.select`` (see :class:`EvalSection`).
                    Remedies (issue 14), all off by default: a budget ensemble and restarts
                    (``budget.*``), a bounded privacy objective (``loss.privacy``), selection by
                    a fresh attacker (``fresh_attacker.*``, ``eval.select=attacker_tradeoff``).
==================  =====================================================================

Paper settings live in configs/anonymization/, the embedded default (tiny models, small
clips) in configs/synthetic/anonymization/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from aux_code.config import ConfigError, LoaderTrainRunConfig, PathsConfig, opt, resolve_under
from aux_code.precision import PRECISION_HELP, PrecisionMode, validate_precision
from aux_code.runtime import DDPSection
from aux_code.schedule import ScheduleSection
from aux_code.sections import ClipSection, shared

Task = Literal["utility_pretrain", "identity", "budget_ssl", "minimax"]
Method = Literal["tedspad", "spact", "temporal_invariance"]


@dataclass
class DataSection:
    """Proxy action set (UCF101 layout), privacy images (VISPR layout), clip geometry."""

    action_fold: int = opt(1, "UCF101 split (trainlist0N / testlist0N) of the proxy action set.")
    action_validation_fraction: float = opt(
        0.2,
        "Fraction of the train list's group numbers (gXX: shared actors and scene; see action_validation_by) held out, in "
        "every class, as the validation split (seeded). Selection uses only this split; testlist0N is reported by "
        "utility_pretrain, never selected on.",
    )
    action_validation_by: Literal["group", "video"] = opt(
        "group",
        "Unit of the action validation carve: whole group numbers across all classes (UCF101's gXX, as the official "
        "splits do) or single videos per class (only for sets with too few groups, e.g. test worlds; clips of a "
        "group then appear on both sides).",
    )
    action_validation_seed: int = shared("validation_seed", 0)
    privacy_validation_fraction: float = shared("validation_fraction", 0.1)
    privacy_validation_seed: int = shared("validation_seed", 0)
    train_crop_scale: list[float] = opt([0.7, 0.9], "Range of the random training crop's side fraction (evaluation uses clip.crop_scale).")
    color_jitter_p: float = opt(0.8, "Probability of colour jitter (strength 0.4) in training augmentations.")
    erase_p: float = opt(0.5, "Probability of random erasing in training augmentations.")
    cache_in_memory: bool = opt(
        False,
        "Decode every action video and privacy image once into memory (uint8) instead of on demand. "
        "For small sets (the synthetic world); UCF101 decoded needs far more memory than a machine has.",
    )
    frames_per_video: int = opt(4, "identity task: random frames drawn from each action train video per epoch.")


@dataclass
class ModelSection:
    """Architectures and where fresh models get their weights (used when no init checkpoint is given)."""

    anonymizer: str = opt(
        "unet",
        "fA: 'unet' (17.27 M), 'unet_tiny', 'bq' (BDQ's learnable Gaussian blur + K-level quantizer, K parameters; it "
        "can only discard information, so it starts near the identity without an init: set init.anonymizer = null), "
        "or 'identity'.",
    )
    anonymizer_width: Optional[int] = opt(None, "UNet base width override (null: the name's default, 64 / 4). Ignored by bq and identity.")
    anonymizer_levels: int = opt(16, "bq only: quantization levels K (K - 1 learnable sorted thresholds); caps each pixel and channel at log2 K bits.")
    anonymizer_temperature: float = opt(
        50.0, "bq only: T of the soft staircase sum_k sigmoid(T (x - b_k)) fA trains through (eval mode uses the hard one).")
    anonymizer_sigma_max: float = opt(
        2.0, "bq only: largest blur sigma in pixels (> 0.5, the initial sigma); the kernel has 2 ceil(3 sigma_max) + 1 taps.")
    utility: str = opt("i3d_r50", "fT: 'i3d_r50', 'i3d_r50_tiny', 'i3d_inception', 'i3d_inception_tiny'.")
    utility_weights: Optional[str] = opt(
        None,
        "Kinetics-400 weight file for fT (relative to paths.weights; see docs/weights.md); its classifier is "
        "re-initialised for the proxy classes. null: random init.",
    )
    utility_dropout: float = opt(0.5, "Dropout before fT's classifier (I3D-R50 only; 0.5 in the paper's I3D).")
    utility_clip_input: Optional[Literal["rgb", "difference", "rgb_difference"]] = opt(
        None, "What fT's stem sees (I3D-R50 only): 'rgb' frames, frame 'difference's, or both stacked ('rgb_difference'); "
        "null: the preset's default."
    )
    budget: str = opt("resnet50", "fB: 'resnet50' or 'resnet_tiny' (backbone + 2-layer projection, L2-normalised).")
    budget_weights: Optional[str] = opt(
        None,
        "Weights for a fresh fB backbone (torchvision / SimCLR ResNet-50 file, relative to paths.weights). null: random init.",
    )
    embedding_hidden: Optional[int] = opt(512, "Hidden width of the triplet embedding MLP on fT's feature (null: feature_dim // 4).")
    embedding_dim: int = opt(128, "Output width of the triplet embedding MLP.")


@dataclass
class InitSection:
    """minimax only: stage-1 checkpoints to start from, relative to paths.runs."""

    anonymizer: Optional[str] = opt(
        "anonymization/identity/best.pt", "fA init (model key 'anonymizer'); null: fresh model.anonymizer."
    )
    utility: Optional[str] = opt(
        "anonymization/utility/best.pt",
        "fT init (model key 'utility', a utility_pretrain run); null: fresh fT from model.utility_weights.",
    )
    budget: Optional[str] = opt(
        "anonymization/budget/best.pt", "fB init (model key 'budget', a budget_ssl run); null: fresh fB from model.budget_weights."
    )


@dataclass
class LossSection:
    """Utility loss L_T = CE + omega * temporal term, budget loss L_B (NT-Xent), minimax weights."""

    method: Method = opt(
        "tedspad",
        "Temporal term of L_T: 'tedspad' (temporal-distinctive triplet L_D), 'spact' (none: CE only, omega "
        "ignored, triplet not computed), 'temporal_invariance' (the Table 2 ablation L_I, NT-Xent between two "
        "times of a video).",
    )
    omega: float = opt(0.1, "Weight of the temporal term in L_T (paper best: 0.1; Table 3 sweeps 0, 0.01, 0.1, 1, 10).")
    margin: float = opt(1.0, "Triplet margin mu (paper: 1; Table 4 sweeps 0.5, 1, 2).")
    negative_distance: Optional[int] = opt(
        None,
        "Raw-frame distance |t' - t| between the anchor and the negative clip: null = random (the paper's default; "
        "at least negative_min_gap apart), or a fixed 8 / 32 (Table 5).",
    )
    negative_min_gap: Optional[int] = opt(
        None, "Random distance only: smallest |t' - t| in raw frames (null: the clip span clip_len * skip, so no frame is shared)."
    )
    invariance_temperature: float = opt(0.1, "Temperature of L_I (temporal_invariance method).")
    temperature: float = opt(0.1, "NT-Xent temperature of the budget loss L_B (SPAct: 0.1).")
    w_t: float = opt(0.7, "w_T: weight of L_T in fA's Step-1 loss w_T * L_T + w_B * P (P = -L_B in the paper; public code: 0.7).")
    w_b: float = opt(1.0, "w_B: weight of fA's privacy term P in its Step-1 loss w_T * L_T + w_B * P (public code: 1.0).")
    privacy: Literal["ntxent", "entropy"] = opt(
        "ntxent",
        "fA's privacy term P against a budget model (fB always minimises NT-Xent): 'ntxent' = -L_B (the paper: fA "
        "maximises fB's NT-Xent, so it wins most by making a view's positive the least similar, a pattern a fresh "
        "attacker relearns); 'entropy' = 1 - H / log(2N - 1), H the mean entropy of fB's softmax over each row's "
        "2N - 1 similarities: bounded in [0, 1], 0 at uniform similarity (BDQ / ALBAR's 'make the budget unsure').",
    )


@dataclass
class BudgetSection:
    """minimax only: the budget models fA plays against (Wu et al., TPAMI 2020)."""

    task: Literal["ntxent", "attributes"] = opt(
        "ntxent",
        "What the budget models learn in Step 2: 'ntxent' = SPAct's self-supervised NT-Xent between two views (no "
        "labels; the paper); 'attributes' = the privacy attributes from the privacy-train labels (BCE on both views; "
        "Wu et al.'s supervised budget): the members are classifiers of model.budget's target architecture; task "
        "budget_ssl then pretrains one on the raw privacy-train images (BCE; configs budget_attributes.yaml), the "
        "minimax starts fB from init.budget (such a checkpoint; null: a seeded fresh one) and the further members "
        "from their own seeds, fA's privacy term is the bounded attribute certainty 1 - mean binary entropy / log 2 "
        "(needs loss.privacy = entropy), and validation reports budget_loss (BCE) and budget_acc (mean attribute "
        "accuracy) of the strongest member.",
    )
    ensemble: int = opt(
        1,
        "Budget models K: fB (from init.budget) plus K - 1 copies of its architecture with their own seeded random "
        "init; fA's Step-1 privacy term is the worst case (max over members), Step 2 trains every member on the same "
        "batch. 1: the paper's single fB.",
    )
    restart_every: Optional[int] = opt(
        None,
        "Re-initialise every budget member (and clear its Adam state) every N minimax steps, before Step 1 of steps "
        "N + 1, 2N + 1, ... (Wu et al.'s 'restarting'; they use 200). null: never.",
    )
    restart_from: Literal["init", "random"] = opt(
        "init",
        "What a restart loads: 'init' = each member's start of the run (fB: the budget_ssl checkpoint of init.budget; "
        "the others: their seeded init); 'random' = a fresh seeded random init per restart (fB too).",
    )


@dataclass
class FreshAttackerSection:
    """minimax only: the fresh attacker probe (anonymization_training.attacker) run at every validation."""

    enabled: bool = opt(
        False,
        "At every validation (and epoch 0) train a fresh tiny CNN on fA's anonymized attacker-train images with their "
        "attribute labels and record its cMAP on the attacker-validation images (val_attacker_cmap), with SSIM / PSNR "
        "of fA's output to its input on those images. Needed by eval.select = attacker_tradeoff; the training itself "
        "is unchanged by it (own seeded RNG).",
    )
    validation_fraction: float = shared("validation_fraction", 0.3)
    validation_seed: int = shared("validation_seed", 0)
    crop_scale: float = shared("crop_scale", 1.0)
    attackers: int = opt(
        3,
        "Fresh attackers per probe (seeds differ); val_attacker_cmap is their worst case (max), val_attacker_cmap_mean "
        "their mean. One attacker sometimes fails to learn an attribute that is still there, and selecting the "
        "lowest of many such scores selects those failures.",
    )
    steps: int = opt(300, "Adam steps of each fresh attacker.")
    batch_size: int = opt(64, "Images per attacker step.")
    lr: float = opt(3e-3, "Attacker Adam learning rate.")
    width: int = opt(16, "Width of the attacker CNN's first block (then 2x, 4x).")


@dataclass
class OptimSection:
    """Adam for every model (the schedule section sets the lr of the single-model tasks)."""

    epochs: int = shared("optim.epochs", 80)  # minimax: the paper's max_anon_epoch
    batch_size: int = shared("optim.batch_size", 8)  # clips (minimax: each half its own batch); identity: frames
    image_batch_size: int = opt(8, "Privacy images per step (budget_ssl, minimax's L_B; the identity task mixes them in as well).")
    steps_per_epoch: Optional[int] = shared("optim.steps_per_epoch", None)
    lr: float = shared("optim.lr", 1e-4)  # the single-model tasks; the minimax has one lr per model
    lr_anonymizer: float = opt(1e-4, "minimax: fA learning rate (paper 1e-4; public code 4e-6).")
    lr_utility: float = opt(1e-4, "minimax: fT + embedding head learning rate (paper 1e-4; public code 1e-5).")
    lr_budget: float = opt(1e-4, "minimax: fB learning rate (paper 1e-4; public code 1e-5).")
    weight_decay: float = shared("optim.weight_decay", 0.0)
    micro_batch: Optional[int] = opt(
        None,
        "minimax: clips per forward/backward pass of fA and fT in both steps; the gradients of batch_size / "
        "micro_batch passes (per rank under torchrun) are summed, each L_T at its share, before one optimiser step, "
        "so a step still means one batch_size batch and the image views still go through in one pass (NT-Xent's "
        "negatives). Changes only BatchNorm's batch statistics (each pass normalised by its own) and the order fT's "
        "dropout masks are drawn in. null: one pass.",
    )
    recompute: list[Literal["anonymizer", "utility", "budget"]] = opt(
        [],
        "minimax: models whose blocks (UNet DoubleConv, I3D / ResNet bottlenecks, Inception blocks) recompute their "
        "activations in the backward pass instead of storing them (aux_code.memory.recompute_blocks): the same "
        "gradients and BatchNorm statistics for about one more forward of each.",
    )


@dataclass
class EvalSection:
    """Validation cadence, checkpoint selection and the image grid."""

    every: int = shared("eval.every", 1)
    select: Literal["tradeoff", "action_top1", "budget_acc", "attacker_tradeoff"] = opt(
        "tradeoff",
        "minimax selection rule on the validation splits (epoch 0, the untrained inits, is recorded but not "
        "selectable): 'tradeoff' = max action_top1 - budget_acc among epochs whose action_top1 >= "
        "epoch-0 action_top1 - max_action_drop (epochs outside the margin score -1 - budget_acc); "
        "'action_top1' = max action top-1; 'budget_acc' = min budget NT-Xent accuracy; 'attacker_tradeoff' = "
        "'tradeoff' with the fresh attacker's validation cMAP in place of budget_acc (needs fresh_attacker.enabled; "
        "the budget model fA was trained to fool plays no part).",
    )
    max_action_drop: float = opt(
        0.1, "tradeoff rules: largest allowed drop of validation action top-1 (a fraction) from epoch 0.")
    clips_per_video: int = opt(1, "Evenly spaced clips per validation / test video; their logits are averaged.")
    budget_batch: int = opt(64, "Images per NT-Xent chunk in validation (the accuracy depends on the chunk size; fixed here).")
    grid_images: int = opt(8, "Fixed privacy val images shown, with fA's output under them, in the image grid (0: none).")


@dataclass
class AnonymizationConfig:
    """Stage 1: train the anonymizer fA (and its adversaries fT, fB) for privacy-preserving action features."""

    task: Task = shared("task", "minimax")
    paths: PathsConfig = opt(PathsConfig(), "Dataset and output roots (configs/paths.yaml only).")
    run: LoaderTrainRunConfig = opt(LoaderTrainRunConfig(), "Run name, seed, device, resume, logging, loader workers.")
    data: DataSection = opt(DataSection(), "Datasets, splits and training augmentation.")
    clip: ClipSection = opt(ClipSection(), "Clip geometry of fT's input (and fA's / fB's frame size).")
    model: ModelSection = opt(ModelSection(), "Architectures and fresh-init weights.")
    init: InitSection = opt(InitSection(), "minimax: init checkpoints.")
    loss: LossSection = opt(LossSection(), "Utility and budget losses.")
    budget: BudgetSection = opt(BudgetSection(), "minimax: budget ensemble and restarts.")
    fresh_attacker: FreshAttackerSection = opt(FreshAttackerSection(), "minimax: fresh-attacker probe at validation.")
    optim: OptimSection = opt(OptimSection(), "Optimisers.")
    schedule: ScheduleSection = opt(ScheduleSection(), "Learning-rate schedule of the single-model tasks (minimax: none).")
    precision: PrecisionMode = opt("auto", PRECISION_HELP)
    eval: EvalSection = opt(EvalSection(), "Validation and selection.")
    ddp: DDPSection = opt(DDPSection(), "Data-parallel training under torchrun (global batches, BatchNorm over ranks).")

    def required_paths(self) -> list[str]:
        needs = {"utility_pretrain": ["ucf101"], "identity": ["ucf101", "vispr"], "budget_ssl": ["vispr"],
                 "minimax": ["ucf101", "vispr"]}
        return needs[self.task]

    def weights_path(self, name: Optional[str]) -> Optional[Path]:
        return None if name is None else resolve_under(self.paths.weights, name)

    def init_path(self, key: str) -> Optional[Path]:
        value = getattr(self.init, key)
        return None if value is None else resolve_under(self.paths.runs, value)

    def validate(self) -> None:
        d, m, o, lo, e, b, fa = self.data, self.model, self.optim, self.loss, self.eval, self.budget, self.fresh_attacker
        checks = [
            (0.0 < d.action_validation_fraction < 1.0, f"data.action_validation_fraction = {d.action_validation_fraction} must be in (0, 1): selection needs a validation split"),
            (0.0 < d.privacy_validation_fraction < 1.0, f"data.privacy_validation_fraction = {d.privacy_validation_fraction} must be in (0, 1)"),
            (len(d.train_crop_scale) == 2 and 0.0 < d.train_crop_scale[0] <= d.train_crop_scale[1] <= 1.0,
             f"data.train_crop_scale = {d.train_crop_scale} must be [low, high] with 0 < low <= high <= 1"),
            (d.frames_per_video >= 1, f"data.frames_per_video = {d.frames_per_video} must be >= 1"),
            (m.anonymizer_levels >= 2, f"model.anonymizer_levels = {m.anonymizer_levels} must be >= 2"),
            (m.anonymizer_temperature > 0, f"model.anonymizer_temperature = {m.anonymizer_temperature} must be > 0"),
            (m.anonymizer_sigma_max > 0.5,
             f"model.anonymizer_sigma_max = {m.anonymizer_sigma_max} must be > 0.5 (bq's initial blur sigma)"),
            (o.epochs >= 1, f"optim.epochs = {o.epochs} must be >= 1"),
            (o.batch_size >= 1, f"optim.batch_size = {o.batch_size} must be >= 1"),
            (o.image_batch_size >= 2, f"optim.image_batch_size = {o.image_batch_size} must be >= 2 (NT-Xent needs negatives)"),
            (o.micro_batch is None or o.micro_batch >= 1, f"optim.micro_batch = {o.micro_batch} must be >= 1 or null"),
            (len(set(o.recompute)) == len(o.recompute), f"optim.recompute = {o.recompute} names a model twice"),
            (o.steps_per_epoch is None or o.steps_per_epoch >= 1, f"optim.steps_per_epoch = {o.steps_per_epoch} must be >= 1 or null"),
            (min(o.lr, o.lr_anonymizer, o.lr_utility, o.lr_budget) > 0, "every optim.lr* must be > 0"),
            (lo.omega >= 0 and lo.margin >= 0, f"loss.omega = {lo.omega} and loss.margin = {lo.margin} must be >= 0"),
            (lo.negative_distance is None or lo.negative_distance >= 1, f"loss.negative_distance = {lo.negative_distance} must be >= 1 or null"),
            (lo.negative_distance is None or lo.negative_min_gap is None,
             "give loss.negative_distance (fixed) or loss.negative_min_gap (random distance), not both"),
            (lo.temperature > 0 and lo.invariance_temperature > 0, "loss temperatures must be > 0"),
            (lo.w_t >= 0 and lo.w_b >= 0, f"loss.w_t = {lo.w_t} and loss.w_b = {lo.w_b} must be >= 0"),
            (e.every >= 1, f"eval.every = {e.every} must be >= 1"),
            (e.clips_per_video >= 1, f"eval.clips_per_video = {e.clips_per_video} must be >= 1"),
            (e.budget_batch >= 2, f"eval.budget_batch = {e.budget_batch} must be >= 2"),
            (e.grid_images >= 0, f"eval.grid_images = {e.grid_images} must be >= 0"),
            (0.0 <= e.max_action_drop <= 1.0, f"eval.max_action_drop = {e.max_action_drop} must be a fraction in [0, 1]"),
            (b.ensemble >= 1, f"budget.ensemble = {b.ensemble} must be >= 1 (the number of budget models)"),
            (b.restart_every is None or b.restart_every >= 1,
             f"budget.restart_every = {b.restart_every} must be >= 1 (steps between budget restarts) or null (never)"),
            (0.0 < fa.validation_fraction < 1.0, f"fresh_attacker.validation_fraction = {fa.validation_fraction} must be in (0, 1)"),
            (0.0 < fa.crop_scale <= 1.0, f"fresh_attacker.crop_scale = {fa.crop_scale} must be in (0, 1]"),
            (fa.steps >= 1 and fa.batch_size >= 2 and fa.width >= 1 and fa.lr > 0 and fa.attackers >= 1,
             f"fresh_attacker.steps = {fa.steps}, batch_size = {fa.batch_size}, width = {fa.width}, lr = {fa.lr} and "
             f"attackers = {fa.attackers} must be >= 1, >= 2, >= 1, > 0 and >= 1"),
            (self.task != "minimax" or b.task != "attributes" or lo.privacy == "entropy",
             "budget.task = attributes has no negated-NT-Xent objective: set loss.privacy = entropy (the bounded "
             "attribute certainty)"),
            (self.task != "minimax" or b.task != "attributes" or e.select in ("attacker_tradeoff", "action_top1"),
             f"eval.select = {e.select} reads the NT-Xent accuracy of the budget; with budget.task = attributes select "
             "by attacker_tradeoff or action_top1"),
            (e.select != "attacker_tradeoff" or fa.enabled,
             "eval.select = attacker_tradeoff scores epochs with the fresh attacker: set fresh_attacker.enabled = true"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.clip.validate()
        self.schedule.validate()
        validate_precision(self.precision, self.run.device)
