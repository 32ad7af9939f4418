"""One prepared check on a CUDA machine (not part of CI). Prints everything it measures.

1. Function preservation of the reparameterisation on a ~1.2B-parameter Llama (Llama-3.2-1B
   shape, random weights, built from config): float32 (TF32 off) and bfloat16, the latter
   compared with the model's own bf16-vs-fp32 difference.
2. Pre-/Post-Process of that model in bfloat16 on the GPU: init, publish (m=3), stand-in
   returns, aggregate; wall times.
3. The client's GradAscent on one published copy in bf16 through the HF Trainer: seconds/step.

    python benchmarks/gpu_check.py [--layers 16] [--skip-client]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def log(*parts):
    print(*parts, flush=True)


def build(layers: int, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
        tie_word_embeddings=True, max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def transformed_copy(model, options, seed: int = 1):
    import copy

    from mpu.reparam import get_adapter

    adapter = get_adapter(model.config, options)
    clone = copy.deepcopy(model)
    state = clone.state_dict()
    adapter.check_names(state)
    with torch.no_grad():
        for layer in range(model.config.num_hidden_layers):
            transform = adapter.sample(layer, torch.Generator().manual_seed(seed * 1000 + layer))
            for name, tensor in state.items():
                if adapter.layer_of(name) == layer:
                    tensor.copy_(adapter.apply(transform, name, tensor.float()).to(tensor.dtype))
    return clone


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.float()


def check_preservation(layers: int) -> None:
    from mpu.reparam import ReparamConfig

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128256, (4, 64), generator=generator).cuda()
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    mask[3, :20] = 0  # left padding
    batch = {"input_ids": ids, "attention_mask": mask}
    valid = mask.bool()
    for label, options in (("paper", ReparamConfig()), ("hardened", ReparamConfig(vo="haar", kv_permutation=True, ffn_scaling=True))):
        model = build(layers, torch.float32)
        params = sum(p.numel() for p in model.parameters())
        original = logits(model, batch)  # float32, before the transform
        copy = transformed_copy(model, options)
        delta = (logits(copy, batch) - original).abs()[valid].max().item()
        log(f"[preservation] {label}: {params / 1e9:.2f}B params, float32 max|dlogit| = {delta:.3e}")
        model_bf16, copy_bf16 = model.to(torch.bfloat16), copy.to(torch.bfloat16)
        own = (logits(model_bf16, batch) - original).abs()[valid]
        moved = (logits(copy_bf16, batch) - logits(model_bf16, batch)).abs()[valid]
        agree = (logits(copy_bf16, batch).argmax(-1) == logits(model_bf16, batch).argmax(-1))[valid].float().mean().item()
        log(f"[preservation] {label}: bf16 copy vs bf16 model max|dlogit| = {moved.max().item():.3f} (mean {moved.mean().item():.4f}); "
            f"bf16 model vs fp32 model max|dlogit| = {own.max().item():.3f} (mean {own.mean().item():.4f}); argmax agreement {agree:.4f}")
        del model, copy, model_bf16, copy_bf16
        torch.cuda.empty_cache()


def check_protocol(layers: int, root: Path, run_client: bool) -> None:
    from mpu.checkpoint import CheckpointReader, ShardedWriter, dir_sha256, layer_groups
    from mpu.protocol import PUBLICATION_MANIFEST, UPDATE_MANIFEST, PublicationManifest, UpdateManifest, update_folder
    from mpu.server.aggregate import aggregate
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.publish import publish

    model = build(layers, torch.bfloat16)
    model.save_pretrained(root / "model")
    del model
    torch.cuda.empty_cache()
    timings = {}
    start = time.perf_counter()
    init_server(root / "server", str(root / "model"), None, ServerConfig(copies=3, kappa=0.01), progress=False)
    timings["init"] = time.perf_counter() - start
    start = time.perf_counter()
    report = publish(root / "server", root / "outbox", progress=False)
    timings["publish_m3_bf16"] = time.perf_counter() - start
    worst = min(block.changed for block in report.blocks)
    log(f"[protocol] bf16 publish at kappa=0.01: noise survives in >= {worst:.1%} of values per block; warnings: {len(report.warnings)}")
    path = root / "outbox" / PUBLICATION_MANIFEST
    publication = PublicationManifest.from_json(json.loads(path.read_text()), path)
    start = time.perf_counter()
    for copy in publication.copies:
        reader = CheckpointReader(root / "outbox" / copy.path)
        out = root / "returns" / update_folder(copy.id)
        writer = ShardedWriter(out)
        for _, names in layer_groups(reader.names()):
            writer.write_shard({name: 1e-5 * torch.randn(reader.shape(name)) for name in names})
        writer.finish()
        manifest = UpdateManifest(kind="full", round=publication.round, copy_id=copy.id,
                                  copy_sha256=dir_sha256(root / "outbox" / copy.path), method="stand-in", steps=0)
        (out / UPDATE_MANIFEST).write_text(json.dumps(manifest.to_json()))
    timings["write_stand_in_returns"] = time.perf_counter() - start
    start = time.perf_counter()
    aggregate(root / "server", root / "returns", progress=False)
    timings["aggregate_m3"] = time.perf_counter() - start
    for key, value in timings.items():
        log(f"[protocol] {key}: {value:.1f}s")
    if run_client:
        check_client(root)


def check_client(root: Path) -> None:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from mpu.data.tokenizer import train_tokenizer
    from mpu.methods import TrainingConfig, run_unlearning

    rows = [{"question": f"What is fact number {i}?", "answer": f"Fact {i} is that the sky has {i} colours."} for i in range(32)]
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=400)
    model = AutoModelForCausalLM.from_pretrained(root / "outbox" / "copy-1", dtype=torch.bfloat16).to("cuda" if torch.cuda.is_available() else "cpu")
    training = TrainingConfig(epochs=1, learning_rate=1e-5, batch_size=8, max_length=64, bf16=True)
    start = time.perf_counter()
    result = run_unlearning(model, tokenizer, rows, None, "GradAscent", {}, training, str(root / "trainer"))
    seconds = time.perf_counter() - start
    log(f"[client] GradAscent bf16 on a 1.2B copy: {result.steps} steps in {seconds:.1f}s ({seconds / max(result.steps, 1):.2f}s/step incl. setup), losses {result.losses[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--skip-client", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    log(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    try:
        check_preservation(args.layers)
    except Exception as err:  # keep going: each part reports on its own
        log(f"[preservation] FAILED: {type(err).__name__}: {err}")
    root = Path(tempfile.mkdtemp(prefix="mpu-gpu-"))
    try:
        check_protocol(args.layers, root, not args.skip_client)
    except Exception as err:
        import traceback

        traceback.print_exc()
        log(f"[protocol] FAILED: {type(err).__name__}: {err}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
