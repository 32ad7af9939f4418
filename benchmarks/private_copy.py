"""What the client's private copy of a publication costs: checking the copies where they were received,
against also copying them into a folder of the client's own and checking them again there (what
``mpu client unlearn`` does, so that nothing the server rewrites after the checks is trained).

    python benchmarks/private_copy.py                          # ~60M parameters, m = 2, 3 repeats
    python benchmarks/private_copy.py --hidden-size 1024 --layers 16 --copies 3

A Llama built from its config (random weights: the cost does not depend on them) is published by
``mpu server init``/``publish`` in a temporary folder; then, alternating ``--repeats`` times in one
process (timings on a shared machine vary between identical runs, so only ratios inside one run mean
anything):

- in place: :meth:`mpu.client.inbox.Publication.verify` of every copy where it lies (what the client did
  before the private copy);
- private: the same check, then :meth:`~mpu.client.inbox.Publication.received` (the copy through
  descriptors, into ``$MPU_CACHE/received``-like folder here) and the check again on the copy.

Prints the median seconds of each, the private copy's own seconds per GB, and the ratio private / in
place. The client's training, which comes after either, is not timed: for the ratio against a whole
run, add it (``benchmarks/client_overhead.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--copies", type=int, default=2, help="m, the published copies (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from mpu.client.inbox import read_publication
    from mpu.server.config import ServerConfig
    from mpu.server.init import init_server
    from mpu.server.publish import publish

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mpu-private-copy-") as scratch:
        root = Path(scratch)
        config = transformers.LlamaConfig(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                                          num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden_size // 64),
                                          num_key_value_heads=max(1, args.hidden_size // 64), vocab_size=args.vocab_size)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        parameters = sum(p.numel() for p in model.parameters())
        model.save_pretrained(root / "model")
        del model
        init_server(root / "server", str(root / "model"), None, ServerConfig(copies=args.copies, kappa=0.01), progress=False)
        publish(root / "server", root / "outbox", progress=False)
        publication = read_publication(root / "outbox")
        size = sum(path.stat().st_size for copy in publication.copies for path in copy.path.iterdir())
        print(f"model: {parameters / 1e6:.1f}M parameters; publication: {args.copies} copies, {size / 1e9:.3f} GB", flush=True)

        in_place, private, copying = [], [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            publication.verify(publication.copies)
            in_place.append(time.perf_counter() - started)

            started = time.perf_counter()
            publication.verify(publication.copies)
            copied = time.perf_counter()
            with publication.received(publication.copies, root / "received") as local:
                copying.append(time.perf_counter() - copied)
                local.verify(local.copies)
            private.append(time.perf_counter() - started)
            print(f"repeat {repeat + 1}: in place {in_place[-1]:.2f} s, private {private[-1]:.2f} s "
                  f"(copy {copying[-1]:.2f} s)", flush=True)

    median = statistics.median
    print(f"in place: {median(in_place):.2f} s; private copy: {median(private):.2f} s "
          f"(the copy itself {median(copying):.2f} s, {median(copying) / (size / 1e9):.2f} s per GB)")
    print(f"ratio private / in place: {median(private) / median(in_place):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
