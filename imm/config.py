"""Run configuration: OmegaConf structured configs, dotted `key=value` overrides, and validation that
names the field and its allowed values before anything expensive starts."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from imm.checks import ConfigError, check_choice, check_range, omegaconf_message
from imm.maths.trajectories import TRAJECTORIES
from imm.methods import METHODS
from imm.methods.registry import resolved_T
from imm.metrics.features import FEATURES
from imm.networks import ARCHITECTURES, PARAMETERIZATIONS, S_EMBEDDINGS
from imm.networks.dit import NAMES as DIT_NAMES
from imm.sampling import SCHEDULES, samplers_for
from imm.training.accelerate import OPTIMIZERS, PRECISIONS

__all__ = ["ConfigError", "RunConfig", "config_from_dict", "load_config", "load_yaml", "run_schema", "to_yaml"]


@dataclass
class DataConfig:
    # a toy 2D set, npy:PATH (an (N, D) array), digits, cifar10:PATH, folder:PATH or latents:PATH (imm.data.latents)
    name: str = "8gaussians"
    n_train: int = 20000  # toy sets: points generated for training
    n_heldout: int = 5000  # toy sets: held-out points for metrics
    heldout_fraction: float = 0.1  # npy: share of rows held out
    seed: int = 0  # the data set's own seed (fixed across runs so metrics compare)
    sigma_d: float | None = None  # data std; None = measured on the training set (the paper uses 0.5 for images)
    xflip: bool = False  # images: mirror half of each batch left-right (the paper's augmentation)
    latent_cache_gb: float = 16.0  # latents:s3://...: each worker's disk cache of shards (a window of them at a time)
    # latents: the per-channel normalisation x = (z - latent_mean) / latent_std * final_std the model works in;
    # null = the set's manifest. imagenet256_dit.yaml sets the official constants (imm.data.latents.OFFICIAL_NORMALISATION).
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None  # latents: the per-channel std of that normalisation (null = the manifest's)


@dataclass
class ModelConfig:
    # a registered network (imm/networks/): mlp (any data, flattened); for images (or latents): unet, ddpmpp (the
    # official IMM CIFAR-10 layout) or dit. A network added later reads its own section model.<arch> if it has one.
    arch: str = "mlp"
    dit: str = "S/2"  # dit: size/patch, S|B|L|XL / 2|4|8 (the paper's ImageNet network: XL/2)
    hidden: int = 256  # mlp
    depth: int = 4  # mlp
    channels: int = 128  # unet: base channels (the paper's CIFAR-10 net: 128, mult [2, 2, 2], 4 blocks, dropout 0.2)
    # unet, ddpmpp: channels per resolution, as multiples of `channels`
    channel_mult: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_blocks: int = 4  # unet, ddpmpp: residual blocks per resolution
    # unet, ddpmpp: the feature-map sizes that get self-attention
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    emb_dim: int = 128  # mlp, unet: width of the time (and label) embedding
    dropout: float = 0.0  # unet, ddpmpp: dropout in the residual blocks (the paper's CIFAR-10 net: 0.2)
    # how f_{s,t}(x_t) mixes x_t and the network: simple_edm, euler_fm or identity (docs/method.md 3)
    parameterization: str = "simple_edm"
    # how s enters the network: identity (s itself) or stride (t - s); null = the method's own: stride for the flow
    # maps (meanflow, tvm, fmm: their official code feeds t - s), identity for the rest
    s_embedding: str | None = None
    class_conditional: bool = False  # a label embedding with a null label (classifier-free guidance)


@dataclass
class TrainConfig:
    steps: int = 5000  # optimizer steps of the run
    batch_size: int = 512  # samples per update, over all workers and micro-batches (a multiple of IMM's M per worker)
    lr: float = 1e-3  # the peak learning rate (after warm-up), constant after
    optimizer: str = "adam"  # adam, adamw or radam (the paper's CIFAR-10 run: radam)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for the others
    warmup_steps: int = 0  # linear warm-up of the learning rate from 0
    grad_clip: float = 0.0  # 0 = off
    # A step whose gradient is not finite is skipped and counted (train/skipped_steps); this many in a row stop the
    # run. Such steps come from rare draws, independent from step to step, so 20 in a row means the run itself has
    # gone bad (weights, data, lr), and at paper scale 20 steps are seconds to a minute of wasted compute.
    max_skipped_steps: int = 20
    # Micro-batches per step: each worker's batch is split in `accumulate` equal parts (each a multiple of IMM's M),
    # gradients add up locally and DDP all-reduces once, so the update equals one step on the whole batch.
    accumulate: int = 1
    label_dropout: float = 0.1  # class-conditional models: share of labels replaced by the null label
    # The GPU switches (imm/training/accelerate.py), no-ops on CPU: auto = bf16 autocast for the forward passes on CUDA (the
    # loss is reduced in fp32), fp32 elsewhere; TF32 matmuls; the U-Net in channels-last layout; fused optimizer step.
    precision: str = "auto"
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA
    channels_last: bool = True  # image networks in channels-last memory layout on CUDA
    fused_optimizer: bool = True  # the optimizer's fused CUDA step where torch has one
    compile: bool = False  # torch.compile the network (first steps pay the compilation)
    ema_decay: float = 0.999  # the EMA of the weights that is sampled and evaluated
    # EDM's EMA ramp-up: the EMA's half-life after n steps is at most ema_rampup * n, so an early evaluation (an ASHA
    # rung) samples the recent weights, not the first steps'; 0 = the fixed decay from the start (the paper's)
    ema_rampup: float = 0.0
    seed: int = 0  # the run's seed: each step's randomness comes from it, the rank and the step, so a resumed run matches
    # a trained model whose network weights the network and its EMA start from (runs:/RUN_ID, models:/NAME@ALIAS, a
    # checkpoint path or s3:// URI; python -m imm.train: a path); the optimizer and schedule start fresh. Another
    # method's model (a distilled flow map's teacher) when its network is read the same way (imm.training.start)
    init_from: str | None = None
    # a trained velocity model to distill (runs:/RUN_ID, models:/NAME@ALIAS, a checkpoint path or s3:// URI; python
    # -m imm.train: a path): the methods that distill take its velocity in place of the data's eps - x. Frozen, in
    # eval mode, loaded once per worker; its data shape, sigma_d, trajectory and classes must be the student's
    teacher: str | None = None
    out_dir: str = "./imm-runs/local"  # python -m imm.train (no Ray): where checkpoint.pt goes and is resumed from
    keep_checkpoints: int = 2  # Ray Train checkpoints kept per run (the newest); a sweep deletes a finished trial's
    checkpoint_every: int = 1000  # steps between checkpoints (and at the last step)
    log_every: int = 100  # steps between reports of loss, learning rate and throughput


@dataclass
class SampleConfig:
    sampler: str | None = None  # None = the method's default (imm.sampler for imm, restart for cm, euler for fm)
    schedule: str | None = None  # None = the method's (imm.schedule for imm, uniform otherwise)
    times: list[float] | None = None  # an explicit grid [T, ..., eps_t]; overrides steps and schedule
    # Grids for given step counts, e.g. [[0.994, 0.006], [0.994, 0.5833, 0.006]]: K steps sample on the grid of
    # K + 1 times if there is one (the paper's tuned grids), else on `schedule`.
    grids: list[list[float]] = field(default_factory=list)
    eta: float = 0.0  # ddim: 0 deterministic, 1 DDPM-like
    cfg_scale: float = 1.0  # classifier-free guidance on the network output; 1 = none


@dataclass
class EvalConfig:
    every: int = 1000  # steps between evaluations (and at the last step)
    # the sampling step counts evaluated: metrics energy/steps_K, fid/steps_K or fd/steps_K
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    n_samples: int = 4000  # samples drawn at each step count
    seed: int = 1234  # the evaluation's sampling seed, fixed so evaluations compare
    batch_size: int = 500  # samples drawn and featurised per chunk (chunk i uses seed + i)
    features: str = "auto"  # Frechet-distance features: auto, inception, classifier, rff, none (imm.metrics.features)
    inception_weights: str | None = None  # pytorch-fid's Inception weights (.safetensors or .pth): a path or s3:// URI
    # latents: the AutoencoderKL folder (path or s3://) that decodes samples to images for FID and the sample grids;
    # null = the VAE the latent set's manifest names, if it is at hand
    vae: str | None = None
    # FID's reference: null = the training set (latents: the decoded held-out latents), or an ADM reference batch
    # .npz (arr_0: uint8 images, e.g. VIRTUAL_imagenet256_labeled.npz), a path or s3:// URI
    reference: str | None = None
    # Trained extractors and reference statistics: a folder or an s3:// prefix the cluster shares (default
    # $IMM_METRICS_CACHE, else $IMM_CACHE/metrics on each machine).
    cache: str | None = "${oc.env:IMM_METRICS_CACHE,null}"


@dataclass
class TrainerConfig:
    num_workers: int = 1  # Ray Train workers (DDP processes); each gets batch_size / num_workers samples
    use_gpu: bool = False  # workers on GPUs (gpus_per_worker each), DDP over NCCL; false: CPU workers over gloo
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each worker
    gpus_per_worker: float = 1.0  # with use_gpu; a fraction packs several trials' workers on one GPU
    # restarts of dead workers from the last checkpoint before the run fails: 0 on one machine, where a crash is a
    # bug to see; the GPU-cluster configs set 3 (a preempted node is an event there)
    max_failures: int = 0
    # seconds between samples of MLflow's system metrics (CPU, memory, GPU utilisation and memory, ...) from
    # every node the run's workers are on, as system/<node>/...; 0: none
    system_metrics_s: float = 10.0


@dataclass
class StorageConfig:
    root: str = "./imm-runs"  # the embedded default's folder: mlflow.db, artifacts/, optuna.journal, ray/
    # Ray Train's storage_path (checkpoints): a folder shared by the nodes or s3://bucket/prefix (default
    # $IMM_RAY_STORAGE, which a cluster's environment sets; else <root>/ray).
    ray_storage: str | None = "${oc.env:IMM_RAY_STORAGE,null}"
    # true: `root` is a folder every node of the cluster sees at the same path (NFS, a shared volume), so
    # Ray checkpoints and a journal study may live under it on a multi-node cluster.
    shared: bool = False


@dataclass
class RunConfig:
    name: str | None = None  # the run's name (Ray's and MLflow's); null = METHOD-DATASET-<hash of the resolved config>
    # what is trained: imm or a registered baseline or flow map (imm/methods/: fm, ddpm, cm, vae, meanflow, ...)
    method: str = "imm"
    trajectory: str = "ot_fm"  # the interpolant x_t = alpha_t x + sigma_t eps: ot_fm (alpha = 1 - t, sigma = t) or cosine
    eps_t: float = 0.0  # the smallest time: the few-step samplers end there and training draws t > eps_t
    # the largest time; None = the method's own: 1 for the flow maps (meanflow, tvm, fmm: from pure noise, as their
    # official code), else the trajectory's default (0.994 ot_fm, 0.996 cosine: IMM's eta = sigma / alpha is
    # singular at 1)
    T: float | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # + one section per method that has one (imm, ddpm, vae, ...): see run_schema()
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


def choices() -> dict[str, tuple]:
    """The allowed values of the keys that name a registered thing, read from the tables now (a schedule or a
    trajectory registered after import is allowed)."""
    return {
        "trajectory": tuple(TRAJECTORIES),
        "model.dit": DIT_NAMES,
        "model.parameterization": tuple(PARAMETERIZATIONS),
        "model.s_embedding": (None, *S_EMBEDDINGS),
        "train.optimizer": tuple(OPTIMIZERS),
        "train.precision": PRECISIONS,
        "sample.schedule": (None, *SCHEDULES),
        "eval.features": FEATURES,
    }

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


def run_schema() -> DictConfig:
    """RunConfig plus the config section of every registered method (imm, ddpm, vae, ...) and of every registered
    network that has its own (model.<arch>)."""
    schema = OmegaConf.structured(RunConfig)
    with open_dict(schema):
        for m in METHODS.values():
            if m.section and m.section not in schema:
                schema[m.section] = OmegaConf.structured(m.config)
        own = [(a.name, a.config, field(default_factory=a.config)) for a in ARCHITECTURES.values() if a.config]
        if own:  # a typed section cannot gain keys: the model section becomes ModelConfig plus model.<arch> fields
            schema.model = OmegaConf.structured(make_dataclass("ModelConfig", own, bases=(ModelConfig,)))
    return schema


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema <- YAML file <- dotted overrides, validated. `path` may name a built-in config ("toy2d")."""
    try:
        layers = [run_schema()]
        if path is not None:
            layers += config_layers(path)
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any], training: bool = True) -> DictConfig:
    """A validated config from a plain dict (e.g. the resolved config stored in a checkpoint). training=False: to
    sample or evaluate a trained model, so what only training needs (the method's check_run) is not asked of it: a
    model trained before a training rule existed (e.g. the bf16 floor on imm.delta) still loads."""
    try:
        cfg = OmegaConf.merge(run_schema(), OmegaConf.create(d))
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    if not training:  # a model trained before the methods had times of their own stored T null and (t, s) inputs
        if cfg.T is None:
            cfg.T = TRAJECTORIES[cfg.trajectory].default_T
        if cfg.model.s_embedding is None:
            cfg.model.s_embedding = "identity"
    validate(cfg, training)
    return cfg


def load_yaml(path: str | Path) -> DictConfig:
    """A YAML file as OmegaConf reads it; a syntax error is one line: file, line, column and what is wrong."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(filter(None, [getattr(e, "context", None), getattr(e, "problem", None)])) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None


def config_layers(path: str | Path, within: Path | None = None, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """A config file as layers: the config it names as `base:` (a built-in name or a path relative to it, itself
    possibly with a base), then its own keys. So a variant (e.g. toy2d_paper) states only what it changes."""
    p = _resolve_path(path, within)
    if p.resolve() in seen:
        raise ConfigError(f"{p}: base: configs form a cycle ({' -> '.join(str(q) for q in (*seen, p.resolve()))})")
    layer = load_yaml(p)
    base = layer.pop("base", None)
    return [*(config_layers(base, p.parent, (*seen, p.resolve())) if base else []), layer]


def _resolve_path(path: str | Path, within: Path | None = None) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if within is not None and (within / p).exists():
        return within / p
    builtin = BUILTIN_CONFIGS / f"{path}.yaml"
    if builtin.exists():
        return builtin
    known = sorted(q.stem for q in BUILTIN_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config file {str(path)!r} not found (built-in configs: {known})")


def validate(cfg: DictConfig, training: bool = True) -> None:
    """Raise ConfigError naming the first bad field and the allowed values (training=False: see config_from_dict)."""
    check_choice(cfg, "method", tuple(METHODS))
    check_choice(cfg, "model.arch", tuple(ARCHITECTURES))
    for key, allowed in choices().items():
        check_choice(cfg, key, allowed)
    method = METHODS[cfg.method]
    check_samplers(cfg)
    for m in METHODS.values():  # every section's own values, whichever method runs
        if m.check_section:
            m.check_section(cfg)
    check_range(cfg, "train.batch_size", 1, None)
    check_range(cfg, "train.steps", 0, None)
    check_range(cfg, "train.lr", 0.0, None, strict_low=True)
    check_range(cfg, "train.ema_decay", 0.0, 1.0)
    check_range(cfg, "train.ema_rampup", 0.0, None)
    check_range(cfg, "train.keep_checkpoints", 1, None)
    check_range(cfg, "train.max_skipped_steps", 1, None)
    check_range(cfg, "train.checkpoint_every", 1, None)
    check_range(cfg, "train.log_every", 1, None)
    check_range(cfg, "model.dropout", 0.0, 1.0)
    check_range(cfg, "data.heldout_fraction", 0.0, 1.0, strict_low=True)
    check_range(cfg, "data.latent_cache_gb", 0.0, None, strict_low=True)
    mean, std = cfg.data.latent_mean, cfg.data.latent_std
    if (mean is None) != (std is None) or (mean is not None and (len(mean) != len(std) or min(std) <= 0)):
        raise ConfigError(f"data.latent_mean, data.latent_std: both null, or per-channel lists of one length with "
                          f"std > 0; got {mean} and {std}")
    if cfg.data.name.startswith("latents:") and cfg.eval.features not in ("auto", "inception", "none"):
        raise ConfigError(f"eval.features: {cfg.eval.features!r} needs training images, which a latent set does not "
                          "hold (allowed for latents: inception, on the VAE-decoded samples; none; auto)")
    check_range(cfg, "eval.every", 1, None)
    check_range(cfg, "eval.n_samples", 2, None)
    check_range(cfg, "eval.batch_size", 1, None)
    if cfg.eval.features == "inception" and not cfg.eval.inception_weights:
        raise ConfigError("eval.inception_weights: eval.features=inception needs the weights' path or s3:// URI "
                          "(pytorch-fid's, as `imm-orch data inception` writes them)")
    check_range(cfg, "trainer.num_workers", 1, None)
    check_range(cfg, "trainer.max_failures", -1, None)
    check_range(cfg, "trainer.system_metrics_s", 0.0, None)
    check_range(cfg, "trainer.cpus_per_worker", 0.0, None)
    check_range(cfg, "trainer.gpus_per_worker", 0.0, None, strict_low=True)
    T = resolved_T(cfg)
    may_be_one = method.default_T == 1.0  # a method that starts from pure noise may set T = 1
    if not (0.0 <= cfg.eps_t < T and (T <= 1.0 if may_be_one else T < 1.0)):
        raise ConfigError(f"eps_t, T: need 0 <= eps_t < T {'<=' if may_be_one else '<'} 1 for method={cfg.method}, "
                          f"got eps_t={cfg.eps_t}, T={T}")
    b, w = cfg.train.batch_size, cfg.trainer.num_workers
    if b % w:
        raise ConfigError(f"train.batch_size: {b} must split evenly over trainer.num_workers={w}")
    check_range(cfg, "train.accumulate", 1, None)
    if (b // w) % cfg.train.accumulate:
        raise ConfigError(f"train.accumulate: {cfg.train.accumulate} must divide the per-worker batch "
                          f"train.batch_size / trainer.num_workers = {b}/{w} = {b // w}")
    check_range(cfg, "sample.eta", 0.0, 1.0)
    check_grids(cfg, T)
    check_range(cfg, "sample.cfg_scale", 0.0, None)
    check_range(cfg, "train.label_dropout", 0.0, 1.0)
    steps = list(cfg.eval.steps) if isinstance(cfg.eval.steps, ListConfig) else cfg.eval.steps
    if not steps or any((not isinstance(k, int)) or k < 1 for k in steps):
        raise ConfigError(f"eval.steps: a non-empty list of sampling step counts >= 1, got {steps}")
    if training and method.check_run:  # what this method cannot train with the rest of the config
        method.check_run(cfg)
    if training and cfg.train.teacher and not method.distills:
        raise ConfigError(f"train.teacher: method={cfg.method} does not distill; the methods that do: "
                          f"{[m.name for m in METHODS.values() if m.distills]}")
    if training and method.needs_teacher and not cfg.train.teacher:
        raise ConfigError(f"train.teacher: method={cfg.method} distills a trained velocity model; name one "
                          "(runs:/RUN_ID, models:/NAME@ALIAS or a checkpoint path)")
    if cfg.data.sigma_d is not None and cfg.data.sigma_d <= 0:
        raise ConfigError(f"data.sigma_d: must be > 0 (or null to measure it), got {cfg.data.sigma_d}")


def check_samplers(cfg: DictConfig) -> None:
    """sample.sampler fits the method that runs; a method's own sampler and schedule keys (imm.sampler, imm.schedule)
    fit that method, whichever runs."""
    allowed = samplers_for(cfg.method)
    if cfg.sample.sampler is not None and cfg.sample.sampler not in allowed:
        raise ConfigError(f"sample.sampler: {cfg.sample.sampler!r} does not apply to method={cfg.method}; "
                          f"choose one of {list(allowed)}")
    for m in METHODS.values():
        if m.sampler_key:
            check_choice(cfg, m.sampler_key, samplers_for(m.name))
        if m.schedule_key:
            check_choice(cfg, m.schedule_key, tuple(SCHEDULES))


def check_grids(cfg: DictConfig, T: float) -> None:
    """sample.grids: decreasing times from T to eps_t, at most one grid per step count."""
    lengths = set()
    for i, grid in enumerate(cfg.sample.grids):
        g = list(grid)
        ok = len(g) >= 2 and all(a > b for a, b in zip(g[:-1], g[1:], strict=True)) and g[0] <= T and g[-1] >= cfg.eps_t
        if not ok:
            raise ConfigError(f"sample.grids[{i}]: {g} is not a decreasing list of >= 2 times in "
                              f"[eps_t, T] = [{cfg.eps_t}, {T}]")
        if len(g) in lengths:
            raise ConfigError(f"sample.grids[{i}]: a second grid for {len(g) - 1} step(s); give one per step count")
        lengths.add(len(g))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
