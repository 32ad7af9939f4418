"""What rendering chat templates in a child process costs: the same conversations rendered in this
process (``render_chat``, the bounded sandbox alone) and in the renderer process (``render_conversation``,
which adds the wall-clock kill and the memory cap), with a Llama-3-style template.

    python benchmarks/chat_template_renderer.py                 # 2,000 conversations, 3 passes, about 3 s
    python benchmarks/chat_template_renderer.py --rows 20000

Prints the renderer's start-up time, the best time per conversation both ways (after one warm-up each)
and their ratio, and what the
renderer adds to encoding a TOFU-sized run (every row rendered twice: prompt and whole conversation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mpu.data import chat_template  # noqa: E402

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


def conversations(rows: int) -> list[tuple[list[dict[str, str]], bool]]:
    """``rows`` TOFU-like rows, each as its prompt and its whole conversation."""
    out = []
    for row in range(rows // 2):
        question = [{"role": "user", "content": f"What is the full name of the author born in city {row}?"}]
        answer = {"role": "assistant", "content": "The author's full name is Jaime Vasquez, a writer of true crime "
                                                  f"born in city {row} in 1958, known for dark, detailed books."}
        out += [(question, True), (question + [answer], False)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="conversations to render each way (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes each way; the best counts (default 3)")
    args = parser.parse_args()
    work = conversations(args.rows)

    started = time.perf_counter()
    chat_template.render_conversation(TEMPLATE, work[0][0], True, VARIABLES, 60.0, "benchmark")
    start_up = time.perf_counter() - started
    chat_template.render_chat(TEMPLATE, work[0][0], True, VARIABLES)   # compiles it here too

    in_process_s = isolated_s = float("inf")
    for _ in range(args.repeats):   # the best of each, taken in turns (a busy machine slows either)
        started = time.perf_counter()
        in_process = [chat_template.render_chat(TEMPLATE, messages, prompt, VARIABLES) for messages, prompt in work]
        in_process_s = min(in_process_s, time.perf_counter() - started)
        started = time.perf_counter()
        isolated = [chat_template.render_conversation(TEMPLATE, messages, prompt, VARIABLES, 60.0, "benchmark")
                    for messages, prompt in work]
        isolated_s = min(isolated_s, time.perf_counter() - started)

    if isolated != in_process:
        raise SystemExit("the renderer process rendered different text from render_chat")
    per_in, per_iso = in_process_s / len(work) * 1e6, isolated_s / len(work) * 1e6
    print(f"renderer start-up (imports, memory cap): {start_up:.2f} s, once per process")
    print(f"{len(work):,} conversations, identical text both ways")
    print(f"  in this process (render_chat):          {per_in:8.1f} us per conversation")
    print(f"  in the renderer (render_conversation):  {per_iso:8.1f} us per conversation")
    print(f"  ratio renderer / in-process:            {per_iso / per_in:8.2f}x")
    # a forget10 run at the release's size encodes ~4,000 rows twice over (train + evaluation sets)
    print(f"  added to encoding 8,000 conversations:  {(per_iso - per_in) * 8000 / 1e6:8.2f} s")


if __name__ == "__main__":
    main()
