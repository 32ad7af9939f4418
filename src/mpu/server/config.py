"""The server's settings, fixed at ``mpu server init`` and kept in the work directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mpu.reparam.options import ReparamConfig, preset_default  # no torch: the CLI builds its flags from these dataclasses

# The per-block poisoning bound ||Delta_l|| / ||theta_l||, measured with benchmarks/poisoning.py on the
# built-in tiny model (docs/security.md has the table): genuine updates of the eleven methods at their
# default learning rates reach at most 0.013 (UNDIAL, lr 1e-4; the others, lr 1e-5, at most 0.0017), and
# at 100x that rate (lr 1e-3, the demo's) at most 0.104 (0.111 over 10 epochs); -0.95 x theta, the
# poisoning that the former whole-model bound (1.0 x ||theta||) let through, is 0.95 in every block.
# 0.5 leaves 38x above the largest genuine update at the default rates (4.5x at lr 1e-3) and refuses that
# poisoning with a factor 1.9.
DEFAULT_MAX_UPDATE_RATIO = 0.5

ALPHA_MODES = ("secret", "public", "list")
# Old spellings still read (YAML, state.json of earlier versions): "reference" was the public schedule's name.
ALPHA_MODE_ALIASES = {"reference": "public"}
NOISE_SCOPES = ("blocks", "all")
PUBLISH_DTYPES = ("float32", "bfloat16", "float16", "source")


# Named combinations of the privacy options (``mpu server init --privacy NAME``). Values not named
# keep the ServerConfig defaults (secret alphas, plane-rotation V/O, FFN permutation, tau = 1).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # arXiv 2602.23798's setting: the public alpha schedule (evenly on [1, 2]), plane rotations, FFN permutation.
    "paper": {"alpha_mode": "public", "independent_noise": 0.0, "reparam": {"vo": "plane", "kv_permutation": False, "ffn_scaling": False}},
    # Everything that raises a curious client's cost; see docs/privacy.md for what it buys. tau = 4 is
    # the smallest measured share whose best m-copy reconstruction keeps >= 0.5 of one copy's error
    # (0.55 at kappa 0.01 and 0.1; tau = 2 gave 0.48).
    "hardened": {
        "alpha_mode": "secret",
        "noise_scope": "all",
        "independent_noise": 4.0,
        "reparam": {"vo": "haar", "kv_permutation": True, "ffn_scaling": True},
    },
}


@dataclass
class ServerConfig:
    copies: int = field(default=3, metadata={"help": "m, the number of perturbed copies per round (>= 2)", "flags": ("-m",), "metavar": "M"})
    kappa: float = field(default=0.01, metadata={"help": "noise ratio: sigma_l = kappa * RMS(task vector of block l; of the weights without --base)", "metavar": "KAPPA"})
    rounds: int = field(default=1, metadata={"help": "R, the number of publish/aggregate rounds", "metavar": "R"})
    eta: float = field(default=1.0, metadata={"help": "server step size: theta += eta * the combined update (--combine at aggregate)", "metavar": "ETA"})
    alpha_mode: str = field(default="secret", metadata={"help": "secret (CSPRNG, fresh each round) | public (evenly on [1, 2], the paper's schedule) | list", "flag": None})  # set by --alphas
    alphas: list[float] | None = field(default=None, metadata={
        "help": "explicit alpha_k, one per copy (alpha_mode=list)",
        "flag_help": "noise multipliers: 'secret' (CSPRNG, fresh each round), 'public' (evenly on [1,2], the paper's schedule; 'reference' is its old name), "
                     "or a list like 1,1.5,2", "flag_default": preset_default("secret"), "metavar": "ALPHAS"})
    alpha_max: float = field(default=2.0, metadata={"help": "secret alphas are uniform on [1, alpha_max]", "metavar": "A"})
    # Default 1.0, not the paper's 0: without it a client holding all copies recovers theta to ~1e-6
    # of the task vector (docs/privacy.md); at kappa = 0.01 it cost no measurable utility.
    independent_noise: float = field(default=1.0, metadata={"metavar": "TAU", "flag_default": preset_default(1.0), "help": "tau: each copy also gets independent N(0, (tau*sigma)^2) noise that no combination of copies cancels (0: the paper's exact cancellation)"})
    noise_scope: str = field(default="blocks", metadata={"choices": NOISE_SCOPES, "flag_default": preset_default("blocks"), "help": "blocks: transformer blocks only (paper); all: also embeddings, final norm, LM head"})
    publish_dtype: str = field(default="source", metadata={"choices": PUBLISH_DTYPES, "help": "dtype of published copies; 'source' keeps the model's own"})
    max_update_ratio: float = field(default=DEFAULT_MAX_UPDATE_RATIO, metadata={"help": "poisoning bound, per block: refuse an update Delta_k with ||Delta_k,l|| > max_update_ratio * ||theta_l|| for any block l (embeddings, final norm and LM head each their own group), or any tensor t of a block with ||Delta_k,t|| > 1.8 * max_update_ratio * ||theta_t|| (docs/security.md)", "metavar": "RATIO"})
    fixed_seed: int | None = field(default=None, metadata={
        "help": "reproducible (NOT secret) noise, alphas and transforms, for experiments and tests only; left out (the "
                "default), each round draws fresh secret randomness from the OS CSPRNG", "flag": "--seed", "metavar": "SEED"})
    reparam: ReparamConfig = field(default_factory=ReparamConfig, metadata={
        "help": "the secret function-preserving transform T_k of each copy (ReparamConfig)",
        "group": "reparameterisation (unset options come from --privacy)"})

    def __post_init__(self):
        if isinstance(self.reparam, dict):
            self.reparam = ReparamConfig(**self.reparam)
        if self.copies < 2:
            raise ValueError(f"copies must be >= 2 (zero-sum noise needs two), got {self.copies}")
        if self.kappa < 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        self.alpha_mode = ALPHA_MODE_ALIASES.get(self.alpha_mode, self.alpha_mode)
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")
        if self.alpha_mode == "list":
            if not self.alphas or len(self.alphas) != self.copies:
                raise ValueError(f"give exactly {self.copies} alphas (one per copy), got {self.alphas}")
            if any(alpha <= 0 for alpha in self.alphas):
                raise ValueError(f"alphas must be positive, got {self.alphas}")
        elif self.alphas is not None:
            raise ValueError("explicit alphas need alpha_mode='list'")
        if self.alpha_max < 1:
            raise ValueError(f"alpha_max must be >= 1, got {self.alpha_max}")
        if self.independent_noise < 0:
            raise ValueError(f"independent_noise must be >= 0, got {self.independent_noise}")
        if self.noise_scope not in NOISE_SCOPES:
            raise ValueError(f"noise_scope must be one of {NOISE_SCOPES}, got {self.noise_scope!r}")
        if self.publish_dtype not in PUBLISH_DTYPES:
            raise ValueError(f"publish_dtype must be one of {PUBLISH_DTYPES}, got {self.publish_dtype!r}")
        if self.max_update_ratio <= 0:
            raise ValueError(f"max_update_ratio must be > 0, got {self.max_update_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (``reparam`` as a dict): what ``state.json`` stores."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerConfig":
        """The inverse of :meth:`to_dict`, with the same checks as the constructor (ValueError naming
        the field); old spellings (alpha_mode "reference") are read."""
        return cls(**data)
