"""Speed and memory of Pre-Process (publish) and Post-Process (aggregate), against a lower bound.

Builds a random Llama-architecture float32 checkpoint (default ~254M parameters, 16 layers),
then times each step in a fresh subprocess and samples its RSS:

    publish (m copies)     vs  lower bound: read every tensor, draw m x N Gaussians, write m files
    aggregate (m updates)  vs  lower bound: read the model and m updates, write one file

and prints wall time, peak RSS above the process's idle RSS, and the ratios. Targets (issue 2):
peak extra RSS <= 0.5 x model bytes, time <= 2 x lower bound.

    python benchmarks/prepost.py [--hidden 1024 --layers 16 --copies 3 --workdir DIR --device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


def build_model(path: Path, hidden: int, layers: int, intermediate: int, vocab: int, heads: int, kv_heads: int) -> int:
    """Writes a random checkpoint shard by shard (never the whole model in memory)."""
    from transformers import LlamaConfig

    from mpu.checkpoint import ShardedWriter

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False,
    )
    path.mkdir(parents=True)
    config.save_pretrained(path)
    head_dim = hidden // heads
    writer = ShardedWriter(path)
    generator = torch.Generator().manual_seed(0)
    randn = lambda *shape: 0.02 * torch.randn(*shape, generator=generator)
    total = 0
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shard = {
            prefix + "self_attn.q_proj.weight": randn(heads * head_dim, hidden),
            prefix + "self_attn.k_proj.weight": randn(kv_heads * head_dim, hidden),
            prefix + "self_attn.v_proj.weight": randn(kv_heads * head_dim, hidden),
            prefix + "self_attn.o_proj.weight": randn(hidden, heads * head_dim),
            prefix + "mlp.gate_proj.weight": randn(intermediate, hidden),
            prefix + "mlp.up_proj.weight": randn(intermediate, hidden),
            prefix + "mlp.down_proj.weight": randn(hidden, intermediate),
            prefix + "input_layernorm.weight": torch.ones(hidden),
            prefix + "post_attention_layernorm.weight": torch.ones(hidden),
        }
        total += sum(t.numel() for t in shard.values())
        writer.write_shard(shard)
    for name, shape in (("model.embed_tokens.weight", (vocab, hidden)), ("lm_head.weight", (vocab, hidden)), ("model.norm.weight", (hidden,))):
        tensor = randn(*shape) if len(shape) == 2 else torch.ones(shape)
        total += tensor.numel()
        writer.write_shard({name: tensor})
    writer.finish()
    return total


# --- steps, each run in its own process ------------------------------------------------------


def step_publish(args) -> None:
    from mpu.server.publish import publish

    publish(args.workdir / "server", args.workdir / "outbox", replace=True, progress=False)


def step_publish_bound(args) -> None:
    from safetensors.torch import save_file

    from mpu.checkpoint import CheckpointReader, layer_groups

    reader = CheckpointReader(args.workdir / "server" / "models" / "round-0")
    out = args.workdir / "bound"
    for k in range(args.copies):
        (out / f"copy-{k}").mkdir(parents=True, exist_ok=True)
    for index, (_, names) in enumerate(layer_groups(reader.names())):
        tensors = {name: reader.get(name) for name in names}
        for k in range(args.copies):  # one copy at a time: the least memory this can take
            noisy = {name: tensor + torch.randn(tensor.shape) for name, tensor in tensors.items()}
            save_file(noisy, str(out / f"copy-{k}" / f"{index:05d}.safetensors"))
            del noisy


def step_aggregate(args) -> None:
    from mpu.server.aggregate import aggregate

    aggregate(args.workdir / "server", args.workdir / "returns", progress=False)


def step_aggregate_bound(args) -> None:
    from safetensors.torch import save_file

    from mpu.checkpoint import CheckpointReader, layer_groups

    model = CheckpointReader(args.workdir / "server" / "models" / "round-0")
    updates = [CheckpointReader(path) for path in sorted((args.workdir / "returns").glob("update-*"))]
    out = args.workdir / "bound-aggregate"
    out.mkdir(exist_ok=True)
    for index, (_, names) in enumerate(layer_groups(model.names())):
        new = {}
        for name in names:
            total = model.get(name)
            for update in updates:
                total = total + update.get(name)
            new[name] = total
        save_file(new, str(out / f"{index:05d}.safetensors"))


STEPS = {"publish": step_publish, "publish_bound": step_publish_bound, "aggregate": step_aggregate, "aggregate_bound": step_aggregate_bound}


def run_step_here(args) -> None:
    """Child process: measure one step's wall time and peak RSS above idle, print JSON."""
    # Import everything first: library imports are not part of the step's cost.
    import mpu.checkpoint, mpu.reparam, mpu.server.aggregate, mpu.server.publish  # noqa: F401
    import safetensors.torch, transformers  # noqa: F401

    transformers.AutoConfig.from_pretrained(args.workdir / "model")  # resolves the lazy model-config import

    process = psutil.Process()
    idle = process.memory_info().rss
    peak = [idle]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    STEPS[args.step](args)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_extra_rss": max(peak[0], process.memory_info().rss) - idle}))


def measure(step: str, args) -> dict:
    command = [sys.executable, __file__, "--step", step, "--workdir", str(args.workdir), "--copies", str(args.copies)]
    # Drop the page cache's advantage as far as we can without root tricks: every step reads
    # files the previous step wrote, so all of them start warm alike.
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def write_returns(args) -> None:
    """Stand-in client returns (small random updates) for the aggregate step."""
    from mpu.checkpoint import CheckpointReader, ShardedWriter, dir_sha256, layer_groups
    from mpu.protocol import PUBLICATION_MANIFEST, UPDATE_MANIFEST, PublicationManifest, UpdateManifest, update_folder

    path = args.workdir / "outbox" / PUBLICATION_MANIFEST
    publication = PublicationManifest.from_json(json.loads(path.read_text()), path)
    for copy in publication.copies:
        copy_dir = args.workdir / "outbox" / copy.path
        reader = CheckpointReader(copy_dir)
        out = args.workdir / "returns" / update_folder(copy.id)
        writer = ShardedWriter(out)
        for _, names in layer_groups(reader.names()):
            writer.write_shard({name: 1e-4 * torch.randn(reader.shape(name)) for name in names})
        writer.finish()
        manifest = UpdateManifest(kind="full", round=publication.round, copy_id=copy.id, copy_sha256=dir_sha256(copy_dir),
                                  method="benchmark", steps=0)
        (out / UPDATE_MANIFEST).write_text(json.dumps(manifest.to_json()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return run_step_here(args)

    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server

    scratch = None
    if args.workdir is None:
        scratch = tempfile.mkdtemp(prefix="mpu-bench-")
        args.workdir = Path(scratch)
    try:
        params = build_model(args.workdir / "model", args.hidden, args.layers, args.intermediate, args.vocab, args.heads, args.kv_heads)
        model_bytes = params * 4
        init_server(args.workdir / "server", str(args.workdir / "model"), None, ServerConfig(copies=args.copies, kappa=0.01), progress=False)
        print(f"model: {params / 1e6:.1f}M parameters, {args.layers} layers, float32, {model_bytes / 2**20:.0f} MiB; m = {args.copies}; {torch.get_num_threads()} threads")
        results = {}
        for step in ("publish_bound", "publish"):
            results[step] = measure(step, args)
        write_returns(args)
        for step in ("aggregate_bound", "aggregate"):
            results[step] = measure(step, args)
        print(f"{'step':<18}{'seconds':>10}{'peak extra RSS (MiB)':>24}{'RSS / model':>14}")
        for step, result in results.items():
            print(f"{step:<18}{result['seconds']:>10.2f}{result['peak_extra_rss'] / 2**20:>24.0f}{result['peak_extra_rss'] / model_bytes:>14.2f}")
        for step in ("publish", "aggregate"):
            time_ratio = results[step]["seconds"] / results[f"{step}_bound"]["seconds"]
            rss_ratio = results[step]["peak_extra_rss"] / model_bytes
            print(f"{step}: time / lower bound = {time_ratio:.2f} (target <= 2), peak extra RSS / model bytes = {rss_ratio:.2f} (target <= 0.5)")
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
