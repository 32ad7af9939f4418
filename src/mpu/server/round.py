"""The server's side of one MPU round as an object: ``Round(workdir).publish(out)`` then ``.aggregate(returns)``.

A round is Pre-Process (publish m noisy, secretly reparameterised copies), the client's training, and
Post-Process (validate the returns, map them back with T_k^-1, combine, apply). :class:`Round` holds
the work directory and the run options and carries both server steps; the combination rule of
Post-Process is a hook (:mod:`mpu.server.combine`), chosen per call, in the spirit of a federated
learning framework's strategy::

    round = Round("server", device="cpu")
    round.publish("outbox")                      # -> PublishReport
    ...                                          # the client trains the copies
    round.aggregate("returns", combine="harmonic")   # -> AggregateReport; the round advances

:func:`mpu.server.publish.publish` and :func:`mpu.server.aggregate.aggregate` are thin wrappers over
these two methods. Each call reads ``state.json`` afresh, so a ``Round`` may be kept across rounds.
"""

from __future__ import annotations

import logging
import math
import secrets as csprng
from pathlib import Path

import torch
from transformers import AutoConfig

from mpu.checkpoint import CheckpointReader, atomic_write_json, copy_model_files, dir_sha256, staging_dir
from mpu.checkpoint.received import remove_leftovers
from mpu.checkpoint.files import PARTY_FILE_MODE, check_output, weights_sha256
from mpu.errors import InputError, MPUError
from mpu.protocol import PUBLICATION_MANIFEST, CopyEntry, PublicationManifest, RoundKeys, copy_folder
from mpu.reparam import get_adapter
from mpu.server.aggregate import AggregateReport, Combination, combined_settings, refuse_above_bound, write_combined
from mpu.server.combine import DEFAULT_COMBINE, CombineRule, get_combine
from mpu.server.init import dtype_from_name
from mpu.server.noise import alphas_for_round, default_device
from mpu.server.publish import OUTSIDE_BLOCKS, PublishReport, _clean_warnings, _Job, _rounding_warnings, _write_copies
from mpu.server.validate import find_returns, received_returns
from mpu.server.workdir import RECEIVED_RETURNS, PublishedRound, ServerState, Workdir

# Each step logs under its own module's name, as it did before the round became an object, so that
# ``logging.getLogger("mpu.server.publish")`` still filters Pre-Process's messages.
publish_log = logging.getLogger("mpu.server.publish")
aggregate_log = logging.getLogger("mpu.server.aggregate")


def _recorded_base(state: ServerState) -> CheckpointReader | None:
    """The base model recorded by ``mpu server init --base``, refused (InputError naming its folder) when
    it is gone or its weights changed since: σ follows θ − θ_base, so another model there changes the
    noise without a word (θ itself there gives σ = 0 on every block)."""
    if not state.base:
        return None
    if not Path(state.base).is_dir():
        raise InputError(state.base, "the base model recorded by `mpu server init --base` is gone; put it back at this path")
    if state.base_sha256 is not None and weights_sha256(state.base) != state.base_sha256:
        raise InputError(state.base, "the base model's weights changed since `mpu server init --base` (σ follows "
                                     "θ − θ_base, so another base changes the noise); put back the base it was "
                                     "initialised with")
    return CheckpointReader(state.base)


class Round:
    """The current round of the server work directory ``workdir``.

    ``device``: where Pre- and Post-Process do their arithmetic (default: the GPU when there is one);
    ``progress``: show a progress bar per block. Nothing is read until a method is called.
    """

    def __init__(self, workdir: str | Path, *, device: str | torch.device | None = None, progress: bool = True):
        self.work = Workdir(workdir)
        self.device = torch.device(device) if device else default_device()
        self.progress = progress

    def publish(self, out_dir: str | Path, *, replace: bool = False) -> PublishReport:
        """Pre-Process: write ``out_dir/manifest.json`` and ``out_dir/copy-1 ... copy-m``.

        Draws (or, on a re-run, reuses) the round's secret, adds alpha-scaled zero-sum noise (plus the
        independent share) to every tensor in scope, applies the secret reparameterisation T_k per
        block, casts to the publish dtype and records what was published in the server state.
        ``out_dir`` is built in a staging folder and appears whole or not at all; an existing one is
        refused unless ``replace``. Raises MPUError when every round is done, InputError for a model the
        adapter cannot place.
        """
        state = self.work.load()
        config = state.config
        if state.finished:
            raise MPUError(f"all {config.rounds} rounds are done; run `mpu server export`")
        round_number = state.current_round
        base = _recorded_base(state)   # before the round's secret is drawn: a refusal leaves nothing written
        inputs = self.work.inputs(state)
        check_output(out_dir, keep=inputs, replace=replace, marker=PUBLICATION_MANIFEST, flag="--force")
        if state.published is not None and state.published.round == round_number:
            publish_log.warning("round %d was already published (publication %s): this publication replaces it. Its copies "
                                "are the same (the round's secret is kept), but returns that name the earlier publication "
                                "are refused", round_number, state.published.publication_id)
        secret = self.work.round_secret(round_number, config.fixed_seed, create=True)
        reader = CheckpointReader(self.work.model_path(state))
        adapter = get_adapter(AutoConfig.from_pretrained(self.work.model_path(state)), config.reparam)
        adapter.check_names(reader.names())
        groups = adapter.block_groups(reader.names())  # refuses, before anything is written, a tensor it cannot place
        dtype = dtype_from_name(state.source_dtype if config.publish_dtype == "source" else config.publish_dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        if config.fixed_seed is not None:
            publish_log.warning("fixed-seed mode: the copies' randomness is reproducible from the seed and NOT secret")

        report = PublishReport(round=round_number, out_dir=Path(out_dir), copies=[], transforms=adapter.describe())
        job = _Job(config, RoundKeys(secret), alphas_for_round(config, secret), adapter, dtype, self.device)
        copy_ids = range(1, config.copies + 1)
        with staging_dir(out_dir, replace=replace, keep=inputs, marker=PUBLICATION_MANIFEST) as stage:
            copy_dirs = [stage / copy_folder(copy_id) for copy_id in copy_ids]
            model_norm = _write_copies(job, reader, base, groups, copy_dirs, report, self.progress)
            for path in copy_dirs:
                copy_model_files(self.work.model_path(state), path, {"dtype": dtype_name})
            manifest = PublicationManifest(
                round=round_number, rounds=config.rounds, publication_id=csprng.token_hex(8),
                architecture=state.model_type, dtype=dtype_name,
                copies=tuple(CopyEntry(copy_id, path.name, dir_sha256(path)) for copy_id, path in zip(copy_ids, copy_dirs)),
            )
            # 0600 like every file written for the other party
            atomic_write_json(stage / PUBLICATION_MANIFEST, manifest.to_json(), mode=PARTY_FILE_MODE)
        report.copies = [copy.to_json() for copy in manifest.copies]
        self._announce(report, config.kappa, dtype_name)
        state.published = PublishedRound(round_number, manifest.publication_id, {copy.id: copy.sha256 for copy in manifest.copies}, model_norm)
        self.work.save(state)
        return report

    @staticmethod
    def _announce(report: PublishReport, kappa: float, dtype: str) -> None:
        """Log the tensors published without noise and fill ``report.warnings`` (and log them)."""
        outside = {name: why for name, why in report.clean.items() if why == OUTSIDE_BLOCKS}
        if outside:  # the configured scope (the paper's), so logged, not a warning
            publish_log.info("kappa=%s, noise_scope 'blocks': %d tensor(s) outside the blocks published without noise: %s",
                     kappa, len(outside), ", ".join(outside))
        unexpected = {name: why for name, why in report.clean.items() if why != OUTSIDE_BLOCKS}
        report.warnings = _clean_warnings(unexpected, kappa) + _rounding_warnings(report.blocks, dtype)
        for warning in report.warnings:
            publish_log.warning(warning)

    def aggregate(self, returns_dir: str | Path, *, combine: str | CombineRule = DEFAULT_COMBINE,
                  allow_mixed: bool = False) -> AggregateReport:
        """Post-Process: validate the returns in ``returns_dir``, combine them with the rule ``combine``
        (a name in :data:`mpu.server.combine.COMBINE_RULES` or a rule object), apply, advance the round.

        The new model is built in a staging folder and becomes current only when ``state.json`` names
        it; the rule's name and weights are recorded in the round's history. Raises MPUError when the
        round is not published or the rule is unknown (before anything is read), InputError (naming the
        file and the reason; the work directory unchanged) for any return
        :func:`mpu.server.validate.find_returns` refuses, for returns trained with different settings
        unless ``allow_mixed``, for NaN/Inf, and for a Delta_k above the poisoning bound (per block, or per tensor of a block).
        """
        rule = get_combine(combine)
        state = self.work.load()
        remove_leftovers(self.work.path, RECEIVED_RETURNS)   # a killed aggregate's copy of the returns
        config = state.config
        published = state.published
        if state.finished:
            raise MPUError(f"all {config.rounds} rounds are aggregated; run `mpu server export`")
        if published is None or published.round != state.current_round:
            if state.rounds_done > 0:
                raise MPUError(f"round {state.rounds_done} is already aggregated and round {state.current_round} has "
                               "not been published; run `mpu server publish` for the next round")
            raise MPUError(f"round {state.current_round} has not been published; run `mpu server publish` first")
        round_number = state.current_round
        model = CheckpointReader(self.work.model_path(state))
        new_rel = f"models/round-{round_number}"
        # validate and combine a copy of the returns of our own: the client cannot swap a file after its check
        with received_returns(returns_dir, self.work.path, published, model) as local_returns:
            updates = find_returns(local_returns, published, model)
            combined, mixed = combined_settings(updates)
            if mixed and not allow_mixed:
                raise InputError(local_returns, "returns were trained with different settings (" + "; ".join(mixed)
                                 + "); combine them only on purpose, with --allow-mixed")
            for line in mixed:
                aggregate_log.warning("combining returns trained with different settings: %s", line)
            secret = self.work.round_secret(round_number, config.fixed_seed, create=False)
            alphas = alphas_for_round(config, secret)
            # find_returns gives every published copy, in copy order: weights[k] is updates[k]'s, as alphas[k] is
            weights = rule.weights(alphas, config.independent_noise)
            adapter = get_adapter(AutoConfig.from_pretrained(self.work.model_path(state)), config.reparam)
            with staging_dir(self.work.path / new_rel, replace=True) as stage:
                combination = Combination(adapter, RoundKeys(secret), weights, config.eta, config.max_update_ratio, self.device)
                step = write_combined(combination, model, updates, stage, desc=f"aggregate round {round_number}", progress=self.progress)
                refuse_above_bound(updates, step.above, config.max_update_ratio)  # before the commit: the stage is dropped
                copy_model_files(self.work.model_path(state), stage)

        state.history.append({
            "round": round_number,
            "update_norms": [math.sqrt(n) for n in step.norms_sq],
            "step_norm": math.sqrt(step.step_sq),
            "methods": sorted({str(u.manifest.method) for u in updates}),
            "combined": combined,
            "mixed": mixed,
            "max_block_ratio": [{"copy": u.copy_id, "group": g, "ratio": r} for u, (g, r) in zip(updates, step.largest)],
            "combine": {"rule": rule.name, "weights": {str(u.copy_id): w for u, w in zip(updates, weights)}},
        })
        state.rounds_done = round_number
        state.model_dir = new_rel
        state.published = None
        self.work.save(state)  # the commit point
        try:
            self.work.clean_stale(state)
        except KeyboardInterrupt:   # after the commit: reporting the command as stopped would say the round was not done
            aggregate_log.warning("Ctrl-C during the clean-up after round %d was committed: the round is aggregated; "
                                  "the earlier model folders under %s other than %s are left over (the next aggregate "
                                  "removes them; they can be deleted by hand)", round_number, self.work.path / "models",
                                  new_rel)
        return AggregateReport(round_number, {u.copy_id: math.sqrt(n) for u, n in zip(updates, step.norms_sq)},
                               math.sqrt(step.step_sq), self.work.path / new_rel, combined, mixed,
                               {u.copy_id: step.largest[k] for k, u in enumerate(updates)}, config.max_update_ratio,
                               config.rounds, rule.name, {u.copy_id: w for u, w in zip(updates, weights)})
