"""Secure aggregation (SecAgg+) against the plain path, in one run (not a test): quantisation error,
time and bytes, and the server's membership test against the sum of two owners' updates.

    PYTHONPATH=src python benchmarks/secagg.py --models /work/runs/audit16 --out runs/secagg

``--models``: a folder prepared by ``benchmarks/audit_table.py`` (its ``models/models.json``: the
tiny Llama theta, about 1.25M parameters, fine-tuned on the built-in TOFU-format benchmark); prepared
there (about 8 minutes on 2 CPU cores) when missing.

What it does:

1. two data owners: A forgets the first 2 authors of forget10 (20 QA), B the other 2 (20 QA), each
   with 20 retain QA of its own; GradDiff, 5 epochs, m = 3 copies, one round (fixed seed);
2. each owner unlearns once (``mpu.flower.client_app.unlearn_message``, timed); the replies are reused
   by both paths;
3. the **plain** path: the publication and the owners' returns travel through Flower's wire format
   (``mpu.flower.secagg.InProcessGrid``: no network), the server combines them
   (``combine_returns``); the **secure** path: the same, with the manifests only, then Flower's
   SecAgg+ secure sum (``secure_returns``). Wall time and serialised bytes of each, in the same process;
4. the quantisation error ``||secure - plain|| / ||plain||`` per copy, for several clip/levels settings;
5. both work directories aggregate; the server's membership test (``mpu.audit.membership``, the
   loss-increase test of docs/privacy.md) on what each server sees: with SecAgg+ the aggregate of
   the sum; without it also each owner's own update. AUCs: A's items vs B's items (can the server tell
   WHICH owner forgot what), and all forget items vs holdout items.

Prints a JSON summary and writes it to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("secagg")
NODES = (101, 202)
JOB = {"method": "GradDiff", "hparams": json.dumps({"alpha": 1.0}),
       "training": json.dumps({"epochs": 5, "learning_rate": 2e-4, "batch_size": 8, "seed": 0})}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    return path


def flat(folder: Path) -> np.ndarray:
    from mpu.checkpoint import CheckpointReader

    reader = CheckpointReader(folder)
    return np.concatenate([reader.get(name).double().numpy().ravel() for name in sorted(reader.names())])


def handlers(replies: dict, secure: bool) -> dict:
    """Each owner's ClientApp (client_app.train's logic) with its unlearning replaced by its cached reply."""
    from flwr.app import Message

    from mpu.flower import secagg

    def make(node):
        def cached(content, node_config, run_id):
            return replies[node]

        def handler(msg, context):
            if secagg.is_stage_message(msg):
                return secagg.stage(msg, context)
            if secagg.requested(msg.content, dict(context.node_config)):
                return Message(secagg.unlearn_and_keep(msg, context, cached), reply_to=msg)
            return Message(replies[node], reply_to=msg)
        return handler
    return {node: make(node) for node in NODES}


def one_path(workdir: Path, outbox: Path, replies: dict, exchange: Path, settings: dict | None) -> dict:
    """Exchange round 1's publication ``outbox`` of ``workdir`` (a copy of the published work directory
    the owners unlearned on), combine or securely sum. Returns the returns folder, wall seconds of the
    exchange and combination, bytes."""
    from flwr.app import Message, RecordDict

    from mpu.flower.files import folder_to_record, record_to_folder
    from mpu.flower.owners import combine_returns
    from mpu.flower.secagg import InProcessGrid, secure_returns
    from mpu.flower.server_app import JOB as JOB_KEY
    from mpu.flower.server_app import OWNER, PUBLICATION, RETURNS, FlowerRun
    config = {"workdir": str(workdir), "owners": len(NODES), "timeout": 600, **JOB, **({"secagg": True, **settings} if settings is not None else {})}
    run = FlowerRun.from_run_config(config)
    exchange.mkdir(parents=True)
    grid = InProcessGrid(handlers(replies, settings is not None))
    started = time.perf_counter()
    publication = folder_to_record(outbox)
    messages = [Message(RecordDict({PUBLICATION: publication, JOB_KEY: run.job()}), dst_node_id=node, message_type="train")
                for node in NODES]
    answers = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages)}
    if settings is None:
        dirs = [record_to_folder(answers[node].content.array_records[RETURNS], exchange / f"owner-{i}") for i, node in enumerate(NODES, 1)]
        sizes = [int(answers[node].content.config_records[OWNER]["forget_rows"]) for node in NODES]
        returns = combine_returns(workdir, dirs, sizes, exchange / "returns")
    else:
        returns = secure_returns(grid, run, list(NODES), answers, exchange, 1)
    seconds = time.perf_counter() - started
    return {"returns": returns, "seconds": seconds, "bytes_to_owners": grid.bytes_down, "bytes_from_owners": grid.bytes_up,
            "messages": len(grid.received)}


def membership(theta_dir: str, workdir: Path, returns_dirs: dict[str, Path], rows: dict) -> dict:
    """The server's loss-increase test on each named returns folder (mapped back with T_k^-1 and
    combined with the harmonic weights, as Post-Process does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.audit.membership import apply_update, auc, item_losses, server_updates

    theta = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(theta_dir)
    before = {key: item_losses(theta, tokenizer, split) for key, split in rows.items()}
    result = {}
    for label, returns in returns_dirs.items():
        weights, updates = server_updates(workdir, returns, 1)
        combined = {name: sum(w * u[name] for w, u in zip(weights, updates)) for name in updates[0]}
        model = apply_update(theta, combined)
        gain = {key: item_losses(model, tokenizer, split) - before[key] for key, split in rows.items()}
        result[label] = {"A_vs_B": auc(gain["A"], gain["B"]),
                         "forget_vs_holdout": auc(np.r_[gain["A"], gain["B"]], gain["holdout"]),
                         "mean_loss_increase": {key: float(value.mean()) for key, value in gain.items()}}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="runs/audit_table", help="audit_table.py's output folder (models cached there)")
    parser.add_argument("--out", default="runs/secagg")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--a-rows", type=int, default=20, help="owner A's forget rows (the first of forget10's 40); B gets the rest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mpu", "transformers", "flwr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    import importlib.util

    from flwr.app import ConfigRecord, RecordDict

    spec = importlib.util.spec_from_file_location("audit_table", Path(__file__).resolve().parent / "audit_table.py")
    audit_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit_table)  # its prepare()/qa_rows() (by path: a `benchmarks` package may shadow this folder)
    prepare, qa_rows = audit_table.prepare, audit_table.qa_rows
    from mpu.flower.client_app import unlearn_message
    from mpu.flower.files import folder_to_record
    from mpu.server.aggregate import aggregate
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.publish import publish

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    info = prepare(Path(args.models))
    data = Path(info["data"])
    forget, retain = qa_rows(data, "forget10"), qa_rows(data, "retain90")
    split = args.a_rows
    if not 1 <= split < 40:
        parser.error("--a-rows must be between 1 and 39")
    owners = {NODES[0]: (forget[:split], retain[-40:-20]), NODES[1]: (forget[split:40], retain[-20:])}
    rows = {"A": forget[:split], "B": forget[split:40], "holdout": qa_rows(data, "holdout10")}

    # round 1 published once; every path works on a copy of this work directory
    init_server(out / "published", info["theta"], None, ServerConfig(copies=3, kappa=0.01, rounds=1, fixed_seed=1), progress=False)
    publish(out / "published", out / "outbox", progress=False)

    def server(name: str) -> Path:
        shutil.copytree(out / "published", out / name)
        return out / name

    # each owner unlearns once
    replies, unlearn_seconds = {}, {}
    for node, (forget_rows, retain_rows) in owners.items():
        node_config = {"forget": str(write_jsonl(out / f"forget-{node}.jsonl", forget_rows)),
                       "retain": str(write_jsonl(out / f"retain-{node}.jsonl", retain_rows))}
        started = time.perf_counter()
        replies[node] = unlearn_message(RecordDict({"publication": folder_to_record(out / "outbox"), "job": ConfigRecord(JOB)}),
                                        node_config, run_id=1)
        unlearn_seconds[node] = round(time.perf_counter() - started, 2)
        log.info("owner %d unlearned in %.1f s", node, unlearn_seconds[node])

    results = {"forget_rows": {"A": split, "B": 40 - split}, "unlearn_seconds": unlearn_seconds, "paths": {}}
    plain_dir = server("plain")
    plain = one_path(plain_dir, out / "outbox", replies, out / "plain-exchange", None)
    results["paths"]["plain"] = {key: plain[key] for key in ("seconds", "bytes_to_owners", "bytes_from_owners", "messages")}
    plain_vectors = {copy: flat(plain["returns"] / f"update-{copy}") for copy in (1, 2, 3)}
    largest = max(float(np.abs(v).max()) for v in plain_vectors.values())
    fitted = float(f"{largest * max(split, 40 - split) * 1.5:.2g}")  # n_o * |Delta'| for the larger owner, with a margin
    settings = {"default (clip 8, levels auto = 2**30)": {},
                "Flower defaults (clip 8, levels 2**22)": {"secagg-levels": 2**22},
                f"fitted clip {fitted:g}, levels auto": {"secagg-clip": fitted},
                f"fitted clip {fitted:g}, levels 2**16": {"secagg-clip": fitted, "secagg-levels": 2**16}}
    secure_dir = None
    for label, setting in settings.items():
        workdir = server(f"secure-{len(results['paths'])}")
        secure = one_path(workdir, out / "outbox", replies, out / f"secure-exchange-{len(results['paths'])}", setting)
        errors = [float(np.linalg.norm(flat(secure["returns"] / f"update-{c}") - plain_vectors[c]) / np.linalg.norm(plain_vectors[c]))
                  for c in (1, 2, 3)]
        results["paths"][label] = {**{key: secure[key] for key in ("seconds", "bytes_to_owners", "bytes_from_owners", "messages")},
                                   "relative_error_per_copy": errors,
                                   "time_ratio_vs_plain": secure["seconds"] / plain["seconds"],
                                   "bytes_from_owners_ratio_vs_plain": secure["bytes_from_owners"] / plain["bytes_from_owners"]}
        log.info("%s: error %s, %.2f s (plain %.2f s)", label, ", ".join(f"{e:.2e}" for e in errors), secure["seconds"], plain["seconds"])
        if secure_dir is None:
            secure_dir, secure_returns_dir = workdir, secure["returns"]

    # aggregate both, compare the models, then the server's membership test
    from mpu.checkpoint import CheckpointReader

    aggregate(plain_dir, plain["returns"], progress=False)
    aggregate(secure_dir, secure_returns_dir, progress=False)
    theta = CheckpointReader(info["theta"])
    left, right = CheckpointReader(plain_dir / "models" / "round-1"), CheckpointReader(secure_dir / "models" / "round-1")
    step = np.concatenate([(left.get(n).double() - theta.get(n).double()).numpy().ravel() for n in sorted(left.names())])
    diff = np.concatenate([(right.get(n).double() - left.get(n).double()).numpy().ravel() for n in sorted(left.names())])
    results["aggregated_model"] = {"relative_difference_of_the_step": float(np.linalg.norm(diff) / np.linalg.norm(step))}
    owner_dirs = {f"owner {'A' if i == 1 else 'B'} alone (plain path)": out / "plain-exchange" / f"owner-{i}" for i in (1, 2)}
    results["membership"] = membership(info["theta"], secure_dir,
                                       {"sum of both owners (SecAgg+)": secure_returns_dir, **owner_dirs}, rows)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
