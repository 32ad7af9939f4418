"""What running the other party's code in a child process costs (mpu.data.isolated): the same work done
in this process and through the child, in the same run.

1. chat templates: conversations rendered by ``render_chat`` here (the bounded sandbox alone) and by
   ``isolated.render_conversation`` (adds the wall-clock kill and the memory cap), a Llama-3-style template;
2. tokenizers: texts tokenized by a tokenizer of our own, and by the same files loaded as the other
   party's (each text tokenized in the child, the ids sent back).

    python benchmarks/isolation_cost.py                 # 2,000 conversations, 3 passes each, about 10 s
    python benchmarks/isolation_cost.py --rows 20000

Prints the child's start-up time, the best time per item each way (after one warm-up each), their ratio,
and what the child adds to a forget10 run at the release's size (about 8,000 conversations rendered and
tokenized: the train and evaluation sets, prompt and whole conversation each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mpu.data import chat_template, isolated  # noqa: E402
from mpu.data.qa import tokenize  # noqa: E402
from mpu.data.tokenizer import train_tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

# The Llama-3.1/3.2 Instruct structure: a dated system header, then header-delimited turns.
TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: {{ date_string }}\n\n{{ system }}<|eot_id|>"
    "{%- for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
VARIABLES = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "date_string": "10 Apr 2025"}
RUN_ITEMS = 8000


def conversations(rows: int) -> list[tuple[list[dict[str, str]], bool]]:
    """``rows`` TOFU-like conversations, half prompts, half whole conversations."""
    out = []
    for row in range(rows // 2):
        question = [{"role": "user", "content": f"What is the full name of the author born in city {row}?"}]
        answer = {"role": "assistant", "content": "The author's full name is Jaime Vasquez, a writer of true crime "
                                                  f"born in city {row} in 1958, known for dark, detailed books."}
        out += [(question, True), (question + [answer], False)]
    return out


def best_of(repeats: int, here, through_child) -> tuple[float, float, list, list]:
    """The best time of each of two callables, taken in turns (a busy machine slows either), and their results."""
    here_s = child_s = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        ours = here()
        here_s = min(here_s, time.perf_counter() - started)
        started = time.perf_counter()
        theirs = through_child()
        child_s = min(child_s, time.perf_counter() - started)
    return here_s, child_s, ours, theirs


def report(what: str, items: int, here_s: float, child_s: float) -> None:
    per_here, per_child = here_s / items * 1e6, child_s / items * 1e6
    print(f"{what}: {items:,} items, identical results both ways")
    print(f"  in this process:       {per_here:8.1f} us per item")
    print(f"  through the child:     {per_child:8.1f} us per item")
    print(f"  ratio child / here:    {per_child / per_here:8.2f}x")
    print(f"  added to {RUN_ITEMS:,} items:  {(per_child - per_here) * RUN_ITEMS / 1e6:8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="conversations each way (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes each way; the best counts (default 3)")
    args = parser.parse_args()
    work = conversations(args.rows)

    started = time.perf_counter()
    isolated.render_conversation(TEMPLATE, work[0][0], True, VARIABLES, 60.0, "benchmark")
    print(f"child start-up (imports, memory cap): {time.perf_counter() - started:.2f} s, once per process")
    chat_template.render_chat(TEMPLATE, work[0][0], True, VARIABLES)   # compiles it here too

    here_s, child_s, ours, theirs = best_of(
        args.repeats,
        lambda: [chat_template.render_chat(TEMPLATE, messages, prompt, VARIABLES) for messages, prompt in work],
        lambda: [isolated.render_conversation(TEMPLATE, messages, prompt, VARIABLES, 60.0, "benchmark")
                 for messages, prompt in work])
    if ours != theirs:
        raise SystemExit("the child rendered different text from render_chat")
    report("chat template, one conversation", len(work), here_s, child_s)

    texts = ours
    own = train_tokenizer(texts[:200], vocab_size=400)
    with tempfile.TemporaryDirectory() as folder:   # the same tokenizer, loaded as the client loads a copy's
        own.save_pretrained(folder)
        isolated.load_other_partys(folder, "benchmark")
        other = AutoTokenizer.from_pretrained(folder)
        isolated.mark_other_partys(other, folder, "benchmark", len(other))
        here_s, child_s, ours, theirs = best_of(
            args.repeats,
            lambda: [tokenize(own, text, False, offsets=True) for text in texts],
            lambda: [tokenize(other, text, False, offsets=True) for text in texts])
    if ours != theirs:
        raise SystemExit("the other party's tokenizer gave different tokens from the same tokenizer of our own")
    report("tokenizer, one text", len(texts), here_s, child_s)


if __name__ == "__main__":
    main()
