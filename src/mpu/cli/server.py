"""``mpu server init|publish|aggregate|export|status`` — the model owner's side."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from mpu.errors import MPUError, printable
from mpu.server.combine import COMBINE_RULES, DEFAULT_COMBINE, combine_help  # no torch either
from mpu.flags import FieldError, add_dataclass_arguments, build_dataclass, flag_of, given_values  # no torch either
from mpu.server.config import ALPHA_MODE_ALIASES, PRESETS, ServerConfig  # no torch: parsing and --help stay fast
from mpu.threads import add_threads_argument, apply_threads


_SV = "mpu_server__"  # argparse dest prefix of the ServerConfig flags


# One wording for every subcommand's --workdir.
WORKDIR_HELP = "server work directory made by `mpu server init` (private: the round secrets live here, mode 0700)"
INIT_WORKDIR_HELP = ("server work directory to create: a new or empty folder (private, mode 0700: the model, the settings "
                     "and the round secrets live here; the other subcommands take the same --workdir)")
# What --model and --base take; said in their help and in the error for a path that is not one.
MODEL_EXPECTED = "a local checkpoint folder (config.json and the weights, as save_pretrained writes it) or a hub id like org/name"


def add_progress_argument(parser: argparse.ArgumentParser, draws: str | None = None) -> None:
    """``--no-progress-bar`` (alias ``--no-progress``), the client commands' flag: ``args.no_progress``.
    ``draws``: the help's wording where the subcommand draws no bar of its own."""
    parser.add_argument("--no-progress-bar", "--no-progress", dest="no_progress", action="store_true",
                        help=draws or "no progress bars (for logs)")

def add_server_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings fixed at init; ``mpu run`` takes the same ones. One flag per field of ServerConfig and
    of its ReparamConfig, generated from the dataclasses (help, default, choices, aliases); ``--privacy``
    lists each preset's settings as PRESETS holds them. Options left unset come from the --privacy
    preset, everything else unset from the dataclasses' defaults."""
    group = parser.add_argument_group("MPU settings (unset privacy options come from --privacy)")
    group.add_argument("--privacy", choices=sorted(PRESETS), default="default", help="preset: " + "; ".join(
        f"{name} ({describe_preset(name) or 'the defaults below'})" for name in PRESETS))
    add_dataclass_arguments(parser, group, ServerConfig, _SV)


def describe_preset(name: str) -> str:
    """``alpha_mode=public, independent_noise=0.0, vo=plane, ...``: the settings preset ``name`` fixes."""
    settings = dict(PRESETS[name])
    reparam = settings.pop("reparam", {})
    return ", ".join(f"{key}={value}" for key, value in {**settings, **reparam}.items())


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of the parsed flags: the --privacy preset, overridden by every flag that was
    given, each typed by its field. Raises MPUError for a value of the wrong type (naming the flag) or
    a setting ServerConfig refuses (its reason)."""
    settings = copy.deepcopy(PRESETS[args.privacy])
    given = given_values(args, _SV)
    if "alphas" in given:
        settings.update(_parse_alphas(given.pop("alphas")))
    settings.setdefault("reparam", {}).update(given.pop("reparam", {}))
    settings.update(given)
    try:
        return build_dataclass(ServerConfig, settings)
    except FieldError as err:
        raise MPUError(f"{flag_of(ServerConfig, err.key)}: {err}" if err.key else str(err)) from None


def _parse_alphas(text: str) -> dict:
    if text in ("secret", "public", "reference"):  # "reference": the public schedule's old name
        return {"alpha_mode": ALPHA_MODE_ALIASES.get(text, text), "alphas": None}
    try:
        return {"alpha_mode": "list", "alphas": [float(value) for value in text.split(",")]}
    except ValueError:
        raise MPUError(f"--alphas must be 'secret', 'public' or numbers like 1,1.5,2; got {text!r}") from None


def register(subparsers) -> None:
    """Add ``mpu server init|publish|aggregate|export|status`` to the CLI's subcommands."""
    server = subparsers.add_parser(
        "server", help="model owner: init, publish copies, aggregate updates, export",
        description="The model owner's side of MPU. Start with `init` (once: model and settings), then per round: "
        "`publish` (hand the outbox to the client) -> the client trains (`mpu client unlearn`) -> `aggregate` (its "
        "returns); `status` says where you are, `export` writes the unlearned model. Each subcommand has --help.")
    commands = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND", required=True)

    init = commands.add_parser(
        "init", help="create a work directory holding the model and the MPU settings",
        description="Creates the server's private work directory (mode 0700): the model as float32 round 0, its "
        "optional base model and the MPU settings, fixed for all rounds. Settings that weaken privacy (kappa 0, the "
        "paper preset, a fixed seed, --no-reparam) are announced as warnings.")
    init.add_argument("--model", required=True, metavar="MODEL", help=f"the fine-tuned model to unlearn: {MODEL_EXPECTED}")
    init.add_argument("--base", default=None, metavar="MODEL",
                      help="the public base model it was fine-tuned from, same form as --model: the noise then scales with the "
                           "task vector (model - base); left out, it scales with the weights themselves")
    init.add_argument("--workdir", required=True, help=INIT_WORKDIR_HELP)
    add_progress_argument(init)
    add_server_config_arguments(init)
    init.set_defaults(func=_init)

    publish = commands.add_parser(
        "publish", help="Pre-Process: write m noisy, reparameterised copies and a public manifest",
        description="Pre-Process of the current round: writes OUT/manifest.json (public: round, publication id, copy "
        "checksums) and OUT/copy-1 ... copy-m, each a plain Hugging Face model folder holding a noisy, secretly "
        "reparameterised copy of the model (weights, config, tokenizer; nothing else of the model's folder). Hand OUT "
        "to the client; the secrets stay in the work directory. Prints the noise actually present per block.")
    publish.add_argument("--workdir", required=True, help=WORKDIR_HELP)
    publish.add_argument("--out", required=True, help="outbox folder to create: manifest.json, copy-1 ... copy-m; hand it to the client "
                         "(its `mpu client unlearn --inbox`)")
    publish.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_threads_argument(publish)
    add_progress_argument(publish)
    publish.set_defaults(func=_publish)

    aggregate = commands.add_parser(
        "aggregate", help="Post-Process: validate the returns, invert, combine, apply; advance the round",
        description="Post-Process of the current round: validates every update-K/ folder in RETURNS (names, shapes, "
        "dtypes, NaN/Inf, checksums of the copy it was trained on, every manifest field, the per-block poisoning bound; "
        "returns trained with different settings only with --allow-mixed), maps each back with the inverse "
        "transform, combines them with the --combine rule (default: harmonic weights, which cancel the zero-sum noise), "
        "applies eta times the result and commits the new model atomically; the rule and its weights are recorded in "
        "the round's history. A rejected return leaves the work directory unchanged.")
    aggregate.add_argument("--workdir", required=True, help=WORKDIR_HELP)
    aggregate.add_argument("--returns", required=True, help="folder holding update-K/ sub-folders: what `mpu client unlearn --out` wrote "
                           "(gather several clients' into one); validated and combined from a private copy in the work "
                           "directory, removed at the end")
    aggregate.add_argument("--combine", default=DEFAULT_COMBINE, type=_combine_rule, metavar="RULE",
                           help=f"how the updates are weighted (default {DEFAULT_COMBINE}): {combine_help()}")
    aggregate.add_argument("--allow-mixed", action="store_true", help="combine returns trained with different methods, hyperparameters, training options or step counts (refused by default)")
    add_threads_argument(aggregate)
    add_progress_argument(aggregate)
    aggregate.set_defaults(func=_aggregate)

    export = commands.add_parser(
        "export", help="write the current (unlearned) model as a plain HF checkpoint",
        description="Writes the work directory's current model to OUT as a plain Hugging Face checkpoint (safetensors "
        "weights in the original dtype or --dtype, config, tokenizer; nothing else of the original model's folder).")
    export.add_argument("--workdir", required=True, help=WORKDIR_HELP)
    export.add_argument("--out", required=True, help="folder to write the model to (new; --force replaces it): load it with "
                        "from_pretrained like any Hugging Face model")
    export.add_argument("--dtype", default=None, help="dtype to write: float32, bfloat16 or float16 (default: the original model's)")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.add_argument("--allow-unaggregated", action="store_true", help="export even though no round was aggregated yet (the original model)")
    add_progress_argument(export)
    export.set_defaults(func=_export)

    status = commands.add_parser(
        "status", help="print the round state (no secrets)",
        description="Prints the model, the MPU settings, the rounds done and planned, whether the current round is "
        "published, and each aggregated round's update and step norms. Nothing secret is printed.")
    status.add_argument("--workdir", required=True, help=WORKDIR_HELP)
    status.add_argument("--json", action="store_true", help="print the state as JSON (for scripts) instead of the summary")
    add_progress_argument(status, draws="accepted for scripts that pass it to every server subcommand (status draws no bar)")
    status.set_defaults(func=_status)


def _init(args) -> int:
    from mpu.server.init import describe_attack_floor, init_server

    config = server_config_from_args(args)
    check_new_workdir(args.workdir)
    check_model_argument("--model", args.model)
    if args.base is not None:
        check_model_argument("--base", args.base)
    state = init_server(args.workdir, args.model, args.base, config, progress=not args.no_progress)
    print(f"initialised {args.workdir}: {state.model_type}, m={state.config.copies}, kappa={state.config.kappa}, R={state.config.rounds}")
    print(describe_attack_floor(state.config, has_base=args.base is not None))
    return 0


def check_new_workdir(workdir: str) -> None:
    """Refuse, before anything is read or written, a ``--workdir`` that ``init`` cannot create: a file, a
    folder that is already a work directory (init never overwrites one: it holds the round secrets) or
    another non-empty folder. The message names the folder and what to do instead."""
    path = Path(workdir)
    if not path.exists():
        return
    if not path.is_dir():
        raise MPUError(f"--workdir {path}: exists and is not a folder; pass a new folder for the work directory")
    if not any(path.iterdir()):
        return
    if (path / "state.json").is_file():
        raise MPUError(f"--workdir {path}: already an mpu server work directory, left unchanged (init never overwrites "
                       f"one and has no --force: it holds the model and the round secrets). Continue it with `mpu server "
                       f"status --workdir {path}` / `publish`, or start over with a new --workdir")
    raise MPUError(f"--workdir {path}: folder exists and is not empty, left unchanged (init has no --force and never "
                   "writes into a non-empty folder); pass a new or empty folder")


def check_model_argument(flag: str, value: str) -> None:
    """Refuse, before anything is written, a ``--model``/``--base`` that looks like a local path but is
    no checkpoint folder, naming the flag, the path and what it takes. A hub id is left to the hub."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MPUError(f"{flag} {value}: not a model directory (no config.json); expected {MODEL_EXPECTED}")
        return
    if path.exists():
        raise MPUError(f"{flag} {value}: a file, not a model directory; expected {MODEL_EXPECTED}")
    # a hub id is org/name; a missing path whose folder exists here (models/typo) is a mistyped local path
    if (value.startswith((".", "/", "~")) or value.count("/") > 1 or value.endswith("/")
            or ("/" in value and path.parent.is_dir())):
        raise MPUError(f"{flag} {value}: no such model directory; expected {MODEL_EXPECTED}")


def _publish(args) -> int:
    from mpu.server.publish import publish

    apply_threads(args.threads)
    report = publish(args.workdir, args.out, replace=args.force, progress=not args.no_progress)
    print(f"round {report.round}: published {len(report.copies)} copies to {report.out_dir}")
    print("transforms: " + "; ".join(report.transforms))
    if report.blocks:
        print(f"{'block':<28}{'sigma':>12}{'intended RMS':>16}{'effective RMS':>16}{'values changed':>16}")
        for block in report.blocks:
            print(f"{block.group:<28}{block.sigma:>12.3e}{block.intended:>16.3e}{block.effective:>16.3e}{block.changed:>16.1%}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def _aggregate(args) -> int:
    from mpu.server.aggregate import aggregate

    apply_threads(args.threads)
    report = aggregate(args.workdir, args.returns, allow_mixed=args.allow_mixed, combine=args.combine,
                       progress=not args.no_progress)
    try:
        _print_aggregate(report)
    except KeyboardInterrupt:   # the round is committed: "interrupted" alone would say it was not
        print(f"\nround {report.round} is aggregated (Ctrl-C while its report printed; `mpu server status` shows it)",
              file=sys.stderr)
    return 0


def _print_aggregate(report) -> None:
    """What an aggregate did: norms, per-block ratios, the applied step, what was combined."""
    print(f"round {report.round} aggregated {len(report.update_norms)} update(s) ({report.round} of {report.rounds} rounds done); new model at {report.model_dir}")
    for copy_id, norm in sorted(report.update_norms.items()):
        group, ratio = report.max_block_ratio[copy_id]
        print(f"  copy {copy_id}: update norm ||Delta'_{copy_id}|| = {norm:.4g}; largest per-block ratio "
              f"||Delta_block|| / ||theta_block|| = {ratio:.3g} ({group}; bound {report.bound:g})")
    weights = ", ".join(f"{report.weights[copy_id]:.4g}" for copy_id in sorted(report.weights))
    # the weights reveal the ratios of the secret alphas: printed on the owner's terminal, never in `status`
    print(f"  applied step norm ||eta * Delta|| = {report.step_norm:.4g}; combination rule {report.combine}, "
          f"weights [{weights}] (secret: they give the ratios of the alphas)")
    combined = report.combined
    print(printable(f"combined copies {combined['copies']}: method {combined['method']}, kind {combined['kind']}, "
                    f"steps {combined['steps']}"))
    for key in ("hparams", "training"):
        if isinstance(combined.get(key), dict) and not report.mixed:
            print(f"  {key}: " + ", ".join(f"{name}={printable(str(value))}" for name, value in sorted(combined[key].items())))
    dp = combined.get("dp")
    if isinstance(dp, dict) and not report.mixed:
        print(printable(f"  client differential privacy: epsilon {dp.get('epsilon')} at delta {dp.get('delta')} for the "
                        f"{dp.get('runs')} copies together (clip norm {dp.get('clip_norm')}, noise multiplier "
                        f"{dp.get('noise_multiplier')})"))
    elif dp is None and not report.mixed:
        print("  client differential privacy: none (the updates reveal which items were forgotten; see docs/privacy.md)")
    for line in report.mixed:
        print(f"  warning: mixed returns (--allow-mixed): {printable(line)}")


def _combine_rule(name: str) -> str:
    """``--combine``'s value as registered; an unknown name is refused by argparse (exit 2) with the
    registry's message, which lists the known rules."""
    try:
        return COMBINE_RULES.canonical(name)
    except MPUError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _export(args) -> int:
    from mpu.server.export import export, rounds_note

    out = export(args.workdir, args.out, args.dtype, replace=args.force, allow_unaggregated=args.allow_unaggregated,
                 progress=not args.no_progress)
    print(f"exported the model ({rounds_note(args.workdir)}) to {out}")
    return 0


def _status(args) -> int:
    from mpu.server.workdir import Workdir

    state = Workdir(args.workdir).load()
    public = {
        "model_type": state.model_type,
        "rounds_done": state.rounds_done,
        "rounds": state.config.rounds,
        "copies": state.config.copies,
        "kappa": state.config.kappa,
        "published_round": state.published.round if state.published else None,
        # the combination weights stay out: harmonic weights are proportional to 1/alpha_k, which is secret
        "history": [public_history(entry) for entry in state.history],
    }
    if args.json:
        print(json.dumps(public, indent=2))
    else:
        print(status_summary(public))
    return 0


def public_history(entry: dict) -> dict:
    """A round's history entry without the combination weights (they give every ratio of the secret α's)."""
    entry = dict(entry)
    if isinstance(entry.get("combine"), dict):
        entry["combine"] = {key: value for key, value in entry["combine"].items() if key != "weights"}
    return entry


def status_summary(public: dict) -> str:
    """The round state of ``server status`` in lines a person reads (``--json`` prints ``public`` itself)."""
    done, planned = public["rounds_done"], public["rounds"]
    lines = [f"model: {public['model_type']}; MPU: m = {public['copies']} copies, kappa = {public['kappa']}",
             f"rounds: {done} of {planned} done"]
    if done >= planned:
        lines.append("next: all rounds done; `mpu server export` writes the unlearned model")
    elif public["published_round"] is not None:
        lines.append(f"next: round {public['published_round']} is published; the client trains the copies, then "
                     "`mpu server aggregate`")
    else:
        lines.append(f"next: `mpu server publish` for round {done + 1}")
    for entry in public["history"]:
        norms = ", ".join(f"{norm:.4g}" for norm in entry.get("update_norms", []))
        methods = ", ".join(entry.get("methods", [])) or "?"
        lines.append(f"round {entry.get('round')}: {len(entry.get('update_norms', []))} update(s) by {methods}, "
                     f"update norms [{norms}], step norm {entry.get('step_norm', float('nan')):.4g}"
                     + (f", combined with the {entry['combine']['rule']} rule" if isinstance(entry.get("combine"), dict) else ""))
    return "\n".join(lines)
