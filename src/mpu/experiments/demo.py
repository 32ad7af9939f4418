"""``mpu demo``: the whole story on the built-in benchmark, offline, in minutes on a CPU.

1. build (or reuse) the built-in benchmark, train (or reuse) a tiny base model on its general data
   (no fictitious entity), then fine-tune the base into the target (all of the benchmark) and a
   retain model (without the forget split), as TOFU's targets are Llama fine-tuned on it;
2. unlearn the forget split with one method noise-free (the baseline) and under MPU;
3. evaluate target, retain, baseline and MPU models with the TOFU metrics and compare.

Everything is cached under ``$MPU_CACHE`` (default ``~/.cache/mpu``), so a second run only redoes
steps 2 and 3.

The demo is reproducible: ``seed`` fixes the data, the tiny models, the data order and, unless
``secret`` is set, the server's randomness too (its fixed-seed mode: noise, alphas and transforms
follow from the seed, so they are not secret). With ``secret`` the server draws its secrets from the
operating system's CSPRNG as in real use, and the MPU row changes from run to run by the noise.

The server's noise scale is sigma_l = kappa * RMS(theta_l - theta_base,l), a fraction of the task
vector, as in the paper (``sigma_from="task-vector"``, the default). ``"weights"`` gives the
server no base, so sigma_l = kappa * RMS(theta_l): far harsher at the same kappa, kept as a control and
labelled as such in the table header, the verdict and summary.json.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpu.data.builtin import SIZE_PRESETS

log = logging.getLogger(__name__)

# The headline columns of the table (TOFU summary keys).
COLUMNS = ["forget_quality", "model_utility", "forget_Q_A_ROUGE", "forget_truth_ratio", "privleak", "extraction_strength"]
SIGMA_FROM = {
    "task-vector": "sigma = kappa * RMS(theta - theta_base) per block (task vector, as in the paper)",
    "weights": "sigma = kappa * RMS(theta) per block (whole weights, no base: a harsher CONTROL, not the paper's regime)",
}


@dataclass
class DemoConfig:
    out_dir: Path = Path("runs/demo")
    authors: int = field(default=SIZE_PRESETS["demo"]["authors"], metadata={"help": "fictitious authors in the built-in benchmark (small shape: 10 QA each)"})
    forget_split: str = "forget10"
    method: str = "NPO"
    epochs: float = 5
    learning_rate: float = 1e-3
    copies: int = 3
    kappa: float = 0.01
    finetune_epochs: float | None = None  # None: the finetune module's calibrated default
    base_epochs: float | None = None      # epochs of the base model on the general data (None: calibrated)
    seed: int = 0
    secret: bool = field(default=False, metadata={"help": "server secrets from the CSPRNG (real use) instead of the seed"})
    sigma_from: str = field(default="task-vector", metadata={"help": "task-vector (the paper) or weights (control)"})

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        if self.sigma_from not in SIGMA_FROM:
            raise ValueError(f"sigma_from must be one of {', '.join(SIGMA_FROM)}, got {self.sigma_from!r}")
        if self.forget_split not in ("forget01", "forget05", "forget10"):
            raise ValueError(f"forget_split must be forget01, forget05 or forget10, got {self.forget_split!r}")
        if self.authors < 20:
            raise ValueError(f"authors must be >= 20 (forget01 needs whole authors), got {self.authors}")
        from mpu.methods import METHODS

        self.method = METHODS.canonical(self.method)  # npo -> NPO before minutes of training; a typo gets a suggestion


def run_demo(config: DemoConfig, progress: bool = True) -> dict:
    from mpu.data.builtin import BuildConfig, cache_root, ensure_builtin
    from mpu.data.qa import load_qa_rows
    from mpu.eval import evaluate
    from mpu.experiments.finetune import ensure_base, finetune, read_record

    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)

    step = time.perf_counter()
    data = ensure_builtin(BuildConfig(seed=config.seed, **{**SIZE_PRESETS["demo"], "authors": config.authors}))
    retain_split = "retain" + str(100 - int(config.forget_split[-2:])).zfill(2)
    models = cache_root() / "models" / data.name
    # the same cache entries as the Hydra experiments' built-in models fine-tuned from the base
    target, retain = models / "target-from-base", models / f"{retain_split}-from-base"
    base = ensure_base(data, "tofu", seed=config.seed, progress=progress, epochs=config.base_epochs)
    for split, path in (("full", target), (retain_split, retain)):
        finetune(data, "tofu", split, path, epochs=config.finetune_epochs, seed=config.seed, progress=progress, base=base)
    timings["data_and_models"] = time.perf_counter() - step

    forget_rows = load_qa_rows(data / "tofu" / f"{config.forget_split}.json")
    retain_rows = load_qa_rows(data / "tofu" / f"{retain_split}.json")
    step = time.perf_counter()
    baseline = _baseline(config, target, forget_rows, retain_rows, out / "baseline")
    timings["unlearn_noise_free"] = time.perf_counter() - step
    step = time.perf_counter()
    mpu_model = _mpu(config, target, base if config.sigma_from == "task-vector" else None, forget_rows, retain_rows,
                     out / "mpu", progress)
    timings["unlearn_mpu"] = time.perf_counter() - step

    results = {}
    for name, model in (("target", target), ("retain", retain), ("noise-free", baseline), ("MPU", mpu_model)):
        step = time.perf_counter()
        results[name] = evaluate(model, "tofu", data, forget_split=config.forget_split,
                                 retain_model=None if name == "retain" else retain,
                                 out_dir=out / "eval" / name, progress=progress)
        timings[f"eval_{name}"] = time.perf_counter() - step
    if results["retain"].get("forget_quality") is None:
        results["retain"]["forget_quality"] = 1.0  # the retain model against itself: identical distributions
    timings["total"] = time.perf_counter() - started

    summary = {
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()},
        "models": {name: {key: results[name].get(key) for key in COLUMNS} for name in results},
        "seconds": {key: round(value, 1) for key, value in timings.items()},
        "verdict": verdict(results["noise-free"], results["MPU"], config.sigma_from),
        "randomness": randomness_note(config),
        "sigma_from": config.sigma_from,
        "sigma": SIGMA_FROM[config.sigma_from],
        "base": str(base),
        "task_vector_ratio": (read_record(target) or {}).get("metrics", {}).get("task_vector_ratio"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "report.png")
    return summary


def _baseline(config: DemoConfig, target: Path, forget_rows, retain_rows, out: Path) -> Path:
    """Noise-free unlearning of the target with the same method and settings as the MPU client."""
    from mpu.methods.job import UnlearnJob, unlearn_model

    job = UnlearnJob(config.method, {}, _training(config), forget_rows, retain_rows)
    unlearn_model(target, job, out)   # allow-listed files only: no metadata of the target
    return out


def _mpu(config: DemoConfig, target: Path, base: Path | None, forget_rows, retain_rows, out: Path, progress: bool) -> Path:
    from mpu.experiments.two_party import run_mpu
    from mpu.server.config import ServerConfig

    # The default privacy settings (secret alphas, tau = 1, reparameterisation on); the randomness comes
    # from the demo's seed unless config.secret, so that two identical demos print the same table.
    server = ServerConfig(copies=config.copies, kappa=config.kappa, rounds=1, fixed_seed=server_seed(config))
    with tempfile.TemporaryDirectory() as scratch:
        return run_mpu(str(target), str(base) if base is not None else None, server, forget_rows, retain_rows, config.method, {}, _training(config),
                       Path(scratch) / "server", out, progress=progress, overwrite=True)   # the demo's own folder


def server_seed(config: DemoConfig) -> int | None:
    """The server's fixed seed in this demo (None: CSPRNG secrets)."""
    return None if config.secret else config.seed


def randomness_note(config: DemoConfig) -> str:
    """One line for the output: where the MPU row's randomness came from."""
    if config.secret:
        return "MPU randomness: CSPRNG secrets, as in real use (the MPU row varies from run to run)"
    return (f"MPU randomness: fixed seed {config.seed} (reproducible, NOT secret: a demo setting; "
            "--secret draws the server's secrets from the CSPRNG as `mpu server init` does)")


def _training(config: DemoConfig):
    from mpu.methods import METHODS, training_options

    defaults = dict(METHODS.get(config.method).training_defaults)
    defaults.update(epochs=config.epochs, learning_rate=config.learning_rate, seed=config.seed, batch_size=32)
    return training_options(defaults)


def verdict(noise_free: dict, mpu: dict, sigma_from: str = "task-vector") -> str:
    return f"{_verdict(noise_free, mpu)} [{sigma_label(sigma_from)}]"


def sigma_label(sigma_from: str) -> str:
    """What MPU's noise was measured against, for the verdict and the table header."""
    return ("sigma from the task vector theta - theta_base" if sigma_from == "task-vector"
            else "sigma from the whole weights theta: CONTROL, harsher than the paper")


def _verdict(noise_free: dict, mpu: dict) -> str:
    base, ours = noise_free.get("model_utility"), mpu.get("model_utility")
    quality = f"forget quality {_fmt(mpu.get('forget_quality'))} vs {_fmt(noise_free.get('forget_quality'))} noise-free"
    if base is None or ours is None:
        return f"MPU model utility unavailable; {quality}"
    if base == 0:
        return f"MPU model utility {ours:.3g} vs {base:.3g} noise-free; {quality}"
    change = (ours - base) / base * 100
    relation = "within 1%" if abs(change) < 1 else f"{'above' if change > 0 else 'below'} by {abs(change):.2f}%"
    return f"MPU model utility {ours:.4g} vs {base:.4g} noise-free ({relation}); {quality}"


def format_table(summary: dict) -> str:
    header = f"{'model':<12}" + "".join(f"{column:>22}" for column in COLUMNS)
    sigma = summary.get("sigma") or SIGMA_FROM["weights"]
    lines = [f"MPU noise: {sigma}", header, "-" * len(header)]
    for name, values in summary["models"].items():
        cells = "".join(f"{_fmt(values.get(column)):>22}" for column in COLUMNS)
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def plot(summary: dict, path: Path) -> None:
    """report.png: which direction is better, the retain model as the goal, n/a for missing values
    (:func:`mpu.experiments.report.demo_figure`)."""
    from mpu.experiments.report import plot_demo

    plot_demo(summary, path, COLUMNS)
