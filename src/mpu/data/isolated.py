"""The other party's code, run in a child process: a client receives the server's chat template (Jinja)
and tokenizer (``tokenizer.json``'s normalizer and pre-tokenizer regular expressions, the added tokens it
normalizes while loading, ``tokenizer_config.json``'s options), and runs them on its private rows.

Both can take unbounded time or memory in single operations that nothing in-process can interrupt: a
Jinja comparison of self-referential lists is one C call, a backtracking regular expression one Rust call
(and onig, the engine tokenizers uses, gives up after its retry limit with a Rust panic: a pyo3
``PanicException``, which is a BaseException, and a backtrace printed on stderr). So they run in one child
Python process per process (:class:`Isolated`), started on first use (about 0.6 s; 2 s once a tokenizer
is needed, for transformers' import):

- the parent waits at most the given seconds per request (one conversation, one text, one tokenizer
  load), writing and reading, and kills the child past them (the next request starts a new one); a
  template or tokenizer that falls behind the run's pace (ISOLATED_SLACK_SECONDS + ISOLATED_MEAN_SECONDS
  an item, over the whole process) is refused too;
- the child's address space is capped (RLIMIT_AS, Linux) at ``ISOLATED_MEMORY_BYTES`` above its start-up
  size, and the kernel kills it when the parent dies (PR_SET_PDEATHSIG, Linux);
- only JSON crosses the pipes, so even a child taken over could return no more than text and numbers;
  its stderr is discarded.

Chat templates are rendered there (:func:`render_conversation`). The other party's tokenizer is loaded
only there (:func:`load_other_partys`: this process gets the facts its encoder needs, an
:class:`OtherPartysTokenizer`), and every text is tokenized there (:func:`other_partys_tokens`): this
process never loads it or runs it on a text, and takes at most one token per UTF-8 byte back.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

from mpu.checkpoint.files import TOKENIZER_CONFIG
from mpu.errors import InputError, MPUError

# What the child may allocate beyond its size once started (about 190 MB of address space with Jinja and
# tokenizers, 700 MB with transformers' tokenizers and torch). A real conversation renders in a few MB
# and a text tokenizes in less; the template size bounds stop a template near 0.5 GB. This is the
# backstop for what those bounds cannot see, and what stops the child, not the machine.
ISOLATED_MEMORY_BYTES = 1 << 30
# How long the other party's tokenizer may take on one text (a rendered conversation, an answer): a real
# one takes well under a millisecond; a regular expression that backtracks, minutes to hours.
TOKENIZER_SECONDS = 10.0
# How long loading the other party's tokenizer may take (a 128k-token vocabulary loads in about a second).
TOKENIZER_LOAD_SECONDS = 60.0
# The pace the other party's code must keep over a whole process (all templates together, all tokenizers
# together, loads included): at most ISOLATED_SLACK_SECONDS + ISOLATED_MEAN_SECONDS per item done. The
# per-item bounds stop one runaway item, not a run of items each just under them (8,000 conversations at
# 9.9 s would take 22 hours; one template or tokenizer per copy multiplied that by m). Real templates and
# tokenizers take well under 1 ms an item and a second to load, far inside this on a busy machine.
ISOLATED_MEAN_SECONDS = 0.1
ISOLATED_SLACK_SECONDS = 20.0
# How long the child may take to start (imports; a busy 2-core machine takes a few seconds).
_START_SECONDS = 120.0
# The child's source root (the folder holding the mpu package), put first on its path, so that the child
# imports this very module however mpu was installed or put on the path.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_CHILD_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from mpu.data.isolated import _serve; _serve(int(sys.argv[2]), sys.argv[3] == 'tokenizers', "
               "int(sys.argv[4]))")


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (at most 300 characters), or a note when it cannot be made (the
    error's type is named beside it): a template's exception can carry what ``str()`` refuses
    (raise_exception([10 ** 5000]) raises ValueError; a deeply nested list, RecursionError)."""
    try:
        text = str(err)
        return text.splitlines()[0][:300] if text else ""
    except Exception:   # RecursionError included
        return "a message that cannot be printed"


def most_tokens(text: str) -> int:
    """The most tokens a tokenizer may give ``text``: one per UTF-8 byte, plus 64 (special tokens, the rare
    normalizer expansion: NFKD splits an accented letter of 2 bytes into 2 characters). Byte-level BPE and
    byte fallback give at most one per byte; a normalizer of the other party's that repeats each character
    40 times made a 100,000-character text 4,000,000 tokens, 155 MB of Python lists per row here."""
    return len(text.encode("utf-8", "surrogatepass")) + 64


def _format_advice() -> str:
    from mpu.data.chat_template import FORMAT_ADVICE

    return FORMAT_ADVICE


# --- the child ---------------------------------------------------------------------------------------


def _reply_limit() -> int:
    """The longest reply line, in bytes: a rendered text at its bound with every character a JSON surrogate
    pair, or its tokens (at most one per byte, each id and span a few digits) as JSON."""
    from mpu.data.chat_template import CHAT_TEMPLATE_MAX_CHARS

    return 64 * CHAT_TEMPLATE_MAX_CHARS + 4096


def _failure(err: BaseException) -> dict[str, Any]:
    if isinstance(err, MemoryError):
        return {"memory": True}
    return {"error": type(err).__name__, "message": first_line(err)}


def _caught(err: BaseException) -> bool:
    """Whether the child answers ``err`` as a failure: everything but the signals to stop (a Rust panic,
    pyo3's PanicException, is a BaseException)."""
    return not isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit))


def _render_reply(template: str, request: dict[str, Any]) -> dict[str, Any]:
    """The child's answer to one rendering request: ``{"text"}``, or what stopped it."""
    from mpu.data.chat_template import TemplateTooLarge, render_chat

    try:
        return {"text": render_chat(template, request["messages"], request["add_generation_prompt"],
                                    request["variables"])}
    except TemplateTooLarge as err:
        return {"too_large": str(err)}
    except Exception as err:   # Jinja's TemplateError (raise_exception), a missing role, RecursionError, ...
        return _failure(err)


def _load_tokenizer(folder: str) -> Any:
    """The tokenizer in ``folder``, as the client loads it, or the exception that stopped it."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except BaseException as err:
        if not _caught(err):
            raise
        return err


# The token ids a client needs by name: padding, the plain format's EOS, the template's special tokens.
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _template_fact(template: Any) -> Any:
    """The chat template as the client's encoder reads it, without nesting: text, None, a number, or a dict
    of texts (named templates); a list, or a name that holds no text, stands as ``["not text"]``, which the
    encoder refuses as a list (transformers itself renders none of them)."""
    if template is None or isinstance(template, (str, bool, int, float)):
        return template
    if isinstance(template, dict):
        return {str(name): value if isinstance(value, str) else ["not text"] for name, value in template.items()}
    return ["not text"]


def _loaded_reply(tokenizer: Any) -> dict[str, Any]:
    """The child's answer to ``{"loaded"}``: ``{"facts"}``, what the client needs of the loaded tokenizer as
    JSON (its chat template, special tokens, their ids, ``model_max_length``), so that the client never
    loads the other party's tokenizer itself; ``{"refused"}`` for an object that is no tokenizer, or one
    that the tokenizers library does not back (Python code of unbounded cost: a quadratic BPE)."""
    if tokenizer is None:
        return {"loaded": False}
    if isinstance(tokenizer, BaseException):
        return _failure(tokenizer)
    from transformers import PreTrainedTokenizerBase

    kind = type(tokenizer).__name__[:60]
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        return {"refused": f"loads a {kind}, not a tokenizer (tokenizer_class)"}
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return {"refused": f"loads a {kind}, which the tokenizers library does not back; a client runs only those "
                           "(tokenizer_class)"}
    try:
        special = {str(name): [str(token) for token in value] if isinstance(value, (list, tuple)) else str(value)
                   for name, value in dict(tokenizer.special_tokens_map).items()}
        limit = tokenizer.model_max_length
        facts = {
            "chat_template": _template_fact(tokenizer.chat_template),
            "special_tokens_map": special,
            **{name: getattr(tokenizer, name) for name in _SPECIAL_IDS},
            "all_special_ids": [int(token) for token in tokenizer.all_special_ids],
            "added_token_ids": [int(token) for token in tokenizer.added_tokens_decoder],
            "model_max_length": limit if type(limit) is int and 0 < limit < 2**63 else None,
        }
        json.dumps(facts)   # a value that is not JSON fails here, not in the reply
        return {"loaded": True, "facts": facts}
    except BaseException as err:
        if not _caught(err):
            raise
        return _failure(err)


def _tokenize_reply(tokenizer: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The child's answer to one tokenization request: ``{"ids", "offsets"}`` (offsets only when asked
    and the tokenizer is fast), ``{"too_many"}`` past :func:`most_tokens`, or what stopped it."""
    try:
        if tokenizer is None:
            raise RuntimeError("no tokenizer was loaded")
        if isinstance(tokenizer, BaseException):   # the tokenizer did not load here
            raise tokenizer
        text = request["text"]
        offsets = bool(request["offsets"]) and bool(getattr(tokenizer, "is_fast", False))
        encoded = tokenizer(text, add_special_tokens=request["special"], return_offsets_mapping=offsets)
        ids = [int(token) for token in encoded["input_ids"]]
        if len(ids) > most_tokens(text):
            return {"too_many": len(ids), "limit": most_tokens(text)}
        return {"ids": ids, "offsets": [[int(a), int(b)] for a, b in encoded["offset_mapping"]] if offsets else None}
    except BaseException as err:
        if not _caught(err):
            raise
        return _failure(err)


def _cap_memory(extra_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at its present size plus ``extra_bytes``. Linux only
    (the size is read from /proc/self/statm); elsewhere the time bound and the size hooks remain."""
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, size + extra_bytes))
    except (ImportError, OSError, ValueError):
        pass


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux's PR_SET_PDEATHSIG): a parent killed by
    SIGKILL or the OOM killer runs no cleanup, and the child may be inside one long C call. Exits now if
    the parent is already gone (it died before the request was made)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _serve(memory_bytes: int, with_tokenizers: bool, parent: int) -> None:
    """The child's loop (started by :class:`Isolated`): one JSON line in, at most one JSON line out.
    ``{"template", "limits"}`` sets the chat template and the parent's size bounds, ``{"load"}`` loads the
    tokenizer of a folder; ``{"loaded"}`` asks whether it loaded, ``{"messages", ...}`` for a rendering,
    ``{"text", "special", "offsets"}`` for a tokenization. Ends when stdin closes."""
    import sys

    from mpu.data import chat_template

    _die_with_parent(parent)
    # The replies get their own descriptor; fd 1 then points at the (discarded) stderr, so that what a library
    # prints (the tokenizers library writes "Ignored unknown kwarg option ..." with a key the server chose)
    # cannot land in the reply channel and desynchronise it.
    send = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        chat_template._bounded_environment()   # the imports, before the memory cap
        importlib.import_module("tokenizers")
        if with_tokenizers:
            importlib.import_module("transformers").AutoTokenizer   # noqa: B018 (imports torch too)
    except (MPUError, ImportError) as err:
        send.write(json.dumps({"fatal": str(err)}).encode("ascii") + b"\n")
        send.flush()
        return
    _cap_memory(memory_bytes)
    send.write(b'{"ready": true}\n')
    send.flush()
    template, tokenizer = "", None
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if "template" in request:
            for name in chat_template.BOUND_NAMES:
                setattr(chat_template, name, int(request["limits"][name]))
            chat_template._bounded_template.cache_clear()   # compiled under the previous bounds
            template = request["template"]
            continue
        if "load" in request:
            tokenizer = _load_tokenizer(request["load"])
            continue
        if "loaded" in request:
            reply = _loaded_reply(tokenizer)
        elif "messages" in request:
            reply = _render_reply(template, request)
        else:
            reply = _tokenize_reply(tokenizer, request)
        send.write(json.dumps(reply).encode("ascii") + b"\n")
        send.flush()


# --- the parent --------------------------------------------------------------------------------------


class _TimedOut(Exception):
    pass


class _Stopped(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Isolated:
    """One child Python process running the other party's code for this process, one request at a time.

    The child (``python -P -c``, its own session, stderr discarded) imports this module, dies with its
    parent and caps its address space at ISOLATED_MEMORY_BYTES above its start-up size. The parent sends
    a template or a tokenizer folder once, then one JSON line per conversation or text, and waits at most
    the given seconds for the write and the reply; past that, or when the child dies or replies nonsense,
    the child is killed and the next request starts a new one. Thread-safe (one lock); a forked process
    starts its own child.
    """

    def __init__(self):
        self._forget()

    def _forget(self) -> None:
        """No child: at start, and in a forked process (whose parent's lock may be held, its child not ours)."""
        import threading

        self._lock = threading.Lock()
        self._process = None
        self._replies = None
        self._owner = None      # the pid that started the child
        self._started_as = None  # (memory cap, with transformers' tokenizers) it was started with
        self._loaded: dict[str, Any] = {}   # what the child holds: "template", "tokenizer" -> key

    def ask(self, setting: tuple[str, Any, dict[str, Any]] | None, request: dict[str, Any], seconds: float,
            with_tokenizers: bool = False) -> tuple[Any, float]:
        """(the child's reply to ``request``, the seconds it took, start-up excluded), after the child holds
        ``setting`` ((kind, key, message): sent only when the child does not hold that key for that kind).
        ``with_tokenizers``: the child must have imported transformers' tokenizers before its memory cap.
        Raises _TimedOut past ``seconds``, _Stopped when the child dies or replies what is not JSON,
        MPUError when it cannot start."""
        import time

        with self._lock:
            try:
                self._start_if_needed(with_tokenizers)
                started = time.monotonic()
                deadline = started + seconds
                if setting is not None and self._loaded.get(setting[0]) != setting[1]:
                    self._send(setting[2], deadline)
                    self._loaded[setting[0]] = setting[1]
                self._send(request, deadline)
                return self._reply(deadline), time.monotonic() - started
            except BaseException:   # a timeout, a dead child, Ctrl-C: the child's state is unknown
                self.close()
                raise

    def close(self) -> None:
        """Stop the child (if this process started it); the next request starts a new one."""
        process, self._process, self._loaded = self._process, None, {}
        if process is None or self._owner != os.getpid():
            return
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _start_if_needed(self, with_tokenizers: bool) -> None:
        import queue
        import sys
        import threading
        import time

        wanted = (ISOLATED_MEMORY_BYTES, with_tokenizers or bool(self._started_as and self._started_as[1]))
        if (self._process is not None and self._process.poll() is None and self._started_as == wanted):
            return
        self.close()
        try:
            process = _spawn([sys.executable, "-P", "-c", _CHILD_CODE, str(_PACKAGE_ROOT), str(wanted[0]),
                              "tokenizers" if wanted[1] else "templates", str(os.getpid())])
        except OSError as err:
            raise MPUError(f"cannot start the process that runs the other party's chat template and tokenizer "
                           f"({err}); use --prompt-format plain") from None
        os.set_blocking(process.stdin.fileno(), False)   # writes wait with select, within the deadline
        self._process, self._owner, self._started_as = process, os.getpid(), wanted
        self._replies = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, self._replies, _reply_limit()),
                         daemon=True, name="mpu-isolated").start()
        try:
            ready = self._reply(time.monotonic() + _START_SECONDS, starting=True)
        except _TimedOut:
            raise MPUError(f"the process that runs chat templates and tokenizers did not start within "
                           f"{_START_SECONDS:g} s") from None
        if ready != {"ready": True}:
            why = ready.get("fatal") if isinstance(ready, dict) else None
            raise MPUError(str(why or "the process that runs chat templates and tokenizers did not start"))

    def _send(self, message: dict[str, Any], deadline: float) -> None:
        """Write ``message`` as one JSON line before ``deadline`` (a child busy past it does not read: a
        blocking write of more than the pipe holds would wait for it, past every bound)."""
        import select
        import time

        data = memoryview(json.dumps(message, default=str).encode("ascii") + b"\n")
        pipe = self._process.stdin.fileno()
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [pipe], [], remaining)[1]:
                raise _TimedOut()
            try:
                data = data[os.write(pipe, data):]
            except BlockingIOError:
                continue
            except OSError:   # the child died: its exit is reported by the reply that does not come
                return

    def _reply(self, deadline: float, starting: bool = False) -> Any:
        import queue
        import time

        try:
            line = self._replies.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise _TimedOut() from None
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            return json.loads(line)
        except (ValueError, RecursionError):   # EOF, a line past the limit, not JSON: the child is gone or not ours
            self._process.kill()
            code = self._process.wait()
            if starting:
                raise MPUError(f"the process that runs chat templates and tokenizers did not start (exit code "
                               f"{code}; `python -c 'import mpu.data.isolated, tokenizers'` shows why)") from None
            raise _Stopped(code) from None


def _spawn(argv: list[str]):
    """The child process, started from a thread that lives as long as this process: PR_SET_PDEATHSIG fires
    when the *thread* that started the child ends, so a child started from a short-lived thread was killed
    with it (the main thread lives until the process ends; any other asks a daemon thread of its own)."""
    import queue
    import subprocess
    import threading

    def start():
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                bufsize=0, start_new_session=True)   # Ctrl-C goes to the parent, which stops it

    if threading.current_thread() is threading.main_thread():
        return start()
    global _SPAWNER
    if _SPAWNER is None or not _SPAWNER[0].is_alive() or _SPAWNER[2] != os.getpid():
        requests: "queue.Queue" = queue.Queue()

        def serve():
            while True:
                job, done = requests.get()
                try:
                    done.put((job(), None))
                except BaseException as err:   # handed to the thread that asked
                    done.put((None, err))

        thread = threading.Thread(target=serve, daemon=True, name="mpu-isolated-spawner")
        thread.start()
        _SPAWNER = (thread, requests, os.getpid())
    done: "queue.Queue" = queue.Queue()
    _SPAWNER[1].put((start, done))
    process, err = done.get()
    if err is not None:
        raise err
    return process


_SPAWNER = None   # (thread, its request queue, the pid it belongs to)


def _read_lines(stream, replies, limit: int) -> None:
    """The child's stdout, line by line (at most ``limit`` bytes each), into ``replies``; ends at EOF or a
    line past the limit (which is passed on without its newline)."""
    import io

    reader = io.BufferedReader(stream)
    while True:
        try:
            line = reader.readline(limit)
        except (OSError, ValueError):   # closed by close()
            line = b""
        replies.put(line)
        if not line.endswith(b"\n"):
            return


_CHILD = Isolated()
atexit.register(_CHILD.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_CHILD._forget)

# kind ("template", "tokenizer") -> [items done in this process, seconds they took]
_PACE: dict[str, list[float]] = {}


def _asked(setting, request: dict[str, Any], seconds: float, source: str, what: str, timed_out: str,
           advice: str = "", with_tokenizers: bool = False) -> Any:
    """The child's reply, or the MPUError naming ``source`` for a timeout (``timed_out``), a dead child, or
    ``what`` (the template or tokenizer) behind the run's pace: the items of its kind in this
    process past ISOLATED_SLACK_SECONDS + ISOLATED_MEAN_SECONDS each."""
    try:
        reply, took = _CHILD.ask(setting, request, seconds, with_tokenizers)
    except _TimedOut:
        raise MPUError(f"{source}: {timed_out}; refusing it{advice}") from None
    except _Stopped as stopped:
        raise MPUError(f"{source}: the process running it stopped (exit code {stopped.code}), most likely at "
                       f"its memory cap of {ISOLATED_MEMORY_BYTES / 2**30:g} GiB; refusing it{advice}") from None
    pace = _PACE.setdefault(setting[0], [0, 0.0])
    pace[0] += 1
    pace[1] += took
    if pace[1] > ISOLATED_SLACK_SECONDS + ISOLATED_MEAN_SECONDS * pace[0]:
        raise MPUError(f"{source}: {what} took {pace[1]:,.1f} s over the {pace[0]:.0f} items of this run so far "
                       f"(the bound is {ISOLATED_SLACK_SECONDS:g} s + {ISOLATED_MEAN_SECONDS * 1000:g} ms an item; "
                       f"real ones take well under 1 ms); refusing it{advice}")
    return reply


def _memory_refusal() -> str:
    return f"needed more than {ISOLATED_MEMORY_BYTES / 2**30:g} GiB of memory"


def _error_of(reply: Any) -> str | None:
    """"Type: message" of a child's failure reply, else None."""
    if isinstance(reply, dict) and isinstance(reply.get("error"), str) and isinstance(reply.get("message"), str):
        return f"{reply['error'][:100]}: {reply['message'][:300]}"
    return None


# --- chat templates ----------------------------------------------------------------------------------


def render_conversation(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                        variables: dict[str, Any], seconds: float, source: str) -> str:
    """``messages`` through the chat ``template``, as ``apply_chat_template(tokenize=False)`` renders them
    (:func:`mpu.data.chat_template.render_chat`), in the child: bounded in size by the sandbox hooks, in
    time by ``seconds`` of wall clock per conversation and the run's pace (ISOLATED_MEAN_SECONDS), and in
    memory by ISOLATED_MEMORY_BYTES. Raises MPUError naming ``source`` (where the template came from)
    when it goes past any bound or fails."""
    from mpu.data import chat_template

    bounds = {name: getattr(chat_template, name) for name in chat_template.BOUND_NAMES}
    setting = ("template", (template, bounds), {"template": template, "limits": bounds})
    request = {"messages": messages, "add_generation_prompt": add_generation_prompt, "variables": variables}
    reply = _asked(setting, request, seconds, source, "the chat template", f"the chat template did not render one "
                   f"conversation within {seconds:g} s (a template with runaway loops)",
                   f". Choose the prompt format explicitly {_format_advice()}")
    return _rendered_text(reply, source)


def _too_large(source: str, why: str) -> MPUError:
    return MPUError(f"{source}: the chat template {why}; refusing it (a template that inflates what it "
                    f"renders). Choose the prompt format explicitly {_format_advice()}")


def _rendered_text(reply: Any, source: str) -> str:
    """The rendered text of a child's reply, or the MPUError naming ``source`` that it reports."""
    from mpu.data.chat_template import CHAT_TEMPLATE_MAX_CHARS

    if isinstance(reply, dict) and isinstance(reply.get("text"), str) and len(reply) == 1:
        if len(reply["text"]) > CHAT_TEMPLATE_MAX_CHARS:
            raise _too_large(source, f"renders {len(reply['text']):,} characters for one conversation; the limit "
                                     f"is {CHAT_TEMPLATE_MAX_CHARS:,}")
        return reply["text"]
    if isinstance(reply, dict) and isinstance(reply.get("too_large"), str):
        raise _too_large(source, reply["too_large"])
    if isinstance(reply, dict) and reply.get("memory") is True:
        raise _too_large(source, _memory_refusal() + " to render one conversation")
    if _error_of(reply):
        raise MPUError(f"{source}: the chat template cannot render this conversation ({_error_of(reply)})")
    raise MPUError(f"{source}: the process rendering the chat template replied what is not a rendering; "
                   f"refusing the template. Choose the prompt format explicitly {_format_advice()}")


# --- the other party's tokenizers --------------------------------------------------------------------

# tokenizer object -> (its folder, the digest of its files, the model's vocabulary size)
_OTHER_PARTYS: "weakref.WeakKeyDictionary[Any, tuple[str, str, int]]" = weakref.WeakKeyDictionary()


def _tokenizer_setting(folder: str | Path, key: str) -> tuple[str, str, dict[str, str]]:
    """What the child must hold to tokenize with the tokenizer of ``folder`` (files digest ``key``)."""
    return ("tokenizer", key, {"load": str(folder)})


class OtherPartysTokenizer:
    """What a client holds of the other party's tokenizer: the facts its encoder needs (the chat template,
    the special tokens and their ids, ``model_max_length``), read by the child from the tokenizer it loaded
    (:func:`load_other_partys`). The tokenizer itself, its normalizer, pre-tokenizer and added tokens, lives
    only in the child: every text is tokenized there (:func:`other_partys_tokens`), so this object has no
    way to tokenize in this process and refuses to be called. It is always fast (offsets): the child
    refuses tokenizers that the tokenizers library does not back."""

    is_fast = True

    def __init__(self, folder: str | Path, facts: dict[str, Any]):
        self.name_or_path = str(folder)
        self.chat_template = facts["chat_template"]   # any JSON value: the encoder refuses one that is not text
        self.special_tokens_map: dict[str, str | list[str]] = facts["special_tokens_map"]
        for name in _SPECIAL_IDS:
            setattr(self, name, facts[name])
        self.all_special_ids: list[int] = facts["all_special_ids"]
        self.added_tokens_decoder = dict.fromkeys(facts["added_token_ids"])   # the encoder reads its ids only
        self.model_max_length: int | None = facts["model_max_length"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise MPUError(f"{self.name_or_path}: the other party's tokenizer runs only in the child process "
                       "(mpu.data.qa.tokenize)")

    def __repr__(self) -> str:
        return f"OtherPartysTokenizer({self.name_or_path!r})"


def _valid_facts(facts: Any) -> bool:
    """Whether the child's ``facts`` have the shape :func:`_loaded_reply` gives (a child taken over could
    send anything JSON can hold)."""
    def is_id(value: Any) -> bool:
        return type(value) is int and value >= 0

    def is_name(value: Any) -> bool:   # any length: the reply line's own bound limits them all
        return isinstance(value, str)

    def is_template(value: Any, named: bool = True) -> bool:
        return (value is None or isinstance(value, (str, bool, int, float)) or value == ["not text"]
                or (named and isinstance(value, dict) and all(is_name(name) and is_template(text, named=False)
                                                              for name, text in value.items())))

    expected = {"chat_template", "special_tokens_map", *_SPECIAL_IDS, "all_special_ids", "added_token_ids",
                "model_max_length"}
    return (isinstance(facts, dict) and set(facts) == expected and is_template(facts["chat_template"])
            and isinstance(facts["special_tokens_map"], dict) and all(
                is_name(name) and (is_name(value) or (isinstance(value, list) and all(map(is_name, value))))
                for name, value in facts["special_tokens_map"].items())
            and all(facts[name] is None or is_id(facts[name]) for name in _SPECIAL_IDS)
            and all(isinstance(facts[name], list) and all(map(is_id, facts[name]))
                    for name in ("all_special_ids", "added_token_ids"))
            and (facts["model_max_length"] is None or is_id(facts["model_max_length"])))


def load_other_partys(folder: str | Path, key: str, vocabulary: int, shown: str | Path | None = None) -> OtherPartysTokenizer:
    """The other party's tokenizer in ``folder``, loaded in the child within TOKENIZER_LOAD_SECONDS (loading
    runs the file's normalizer on its added tokens, so a backtracking expression stalls or panics there)
    and never in this process: what this process gets is an :class:`OtherPartysTokenizer` holding what
    the encoder needs, registered with :func:`mark_other_partys` under ``vocabulary`` (the model's
    vocabulary size, from its config). ``key`` is the digest of the folder's files (the child reloads when
    it changes). Raises InputError naming the folder when the load fails, takes too long or too much
    memory, and naming its tokenizer_config.json when ``tokenizer_class`` loads no tokenizer or one the
    tokenizers library does not back. ``shown``: the folder the files were received in, when ``folder`` is
    a private copy of it: the tokenizer's ``name_or_path`` (which the shipped prompt formats are matched
    on) and every message name it, so that a private copy trains as the received folder would."""
    source = str(shown or folder)
    try:
        reply = _asked(_tokenizer_setting(folder, key), {"loaded": True}, TOKENIZER_LOAD_SECONDS, source,
                       "the tokenizer", f"the tokenizer did not load within {TOKENIZER_LOAD_SECONDS:g} s (a regular "
                       "expression that backtracks on its added tokens)", with_tokenizers=True)
    except InputError:
        raise
    except MPUError as err:   # a timeout, the child stopped, or behind the run's pace: the folder's fault
        raise InputError(source, str(err).removeprefix(f"{source}: ")) from None
    if isinstance(reply, dict) and reply.get("loaded") is True and _valid_facts(reply.get("facts")):
        tokenizer = OtherPartysTokenizer(source, reply["facts"])
        mark_other_partys(tokenizer, folder, key, vocabulary)
        return tokenizer
    if isinstance(reply, dict) and reply.get("loaded") is True:
        raise InputError(source, "the process loading the tokenizer replied what does not describe a tokenizer; "
                                 "refusing it")
    if isinstance(reply, dict) and isinstance(reply.get("refused"), str):
        raise InputError(Path(source, TOKENIZER_CONFIG), reply["refused"][:400])
    if isinstance(reply, dict) and reply.get("memory") is True:
        raise InputError(source, f"the tokenizer {_memory_refusal()} to load; refusing it")
    raise InputError(source, f"cannot load the tokenizer ({_error_of(reply) or 'no reason given'})")


def mark_other_partys(tokenizer: Any, folder: str | Path, key: str, vocabulary: int) -> None:
    """Register ``tokenizer`` as the other party's tokenizer of ``folder`` (loaded in the child under
    ``key``): from now on :func:`other_partys_tokens` tokenizes its texts in the child, and refuses ids
    outside ``vocabulary`` (the model's vocabulary size, from its config: an id past the embedding is an
    IndexError mid-training, a device assert on a GPU). :func:`load_other_partys` registers what it
    returns; tests register a tokenizer loaded here to compare the two."""
    _OTHER_PARTYS[tokenizer] = (str(folder), key, int(vocabulary))


def moved_other_partys(tokenizer: Any, folder: str | Path, shown: str | Path | None = None) -> None:
    """Point the registered ``tokenizer`` at ``folder``, which holds the files it was loaded from (the
    same ``key``) at another place: the child reloads from there when it must; ``shown`` (default
    ``folder``) becomes its ``name_or_path``, as in :func:`load_other_partys`. A client checks and
    trains a private copy of each publication, removed after its run; a tokenizer kept for the next run
    would otherwise name a folder that is gone. Raises KeyError for a tokenizer not registered."""
    _, key, vocabulary = _OTHER_PARTYS[tokenizer]
    _OTHER_PARTYS[tokenizer] = (str(folder), key, vocabulary)
    tokenizer.name_or_path = str(shown or folder)


def loaded_from(tokenizer: Any) -> str | None:
    """The folder the registered ``tokenizer``'s files are read from (a private copy of the received
    folder its ``name_or_path`` shows), None for a tokenizer not registered."""
    return _OTHER_PARTYS[tokenizer][0] if is_other_partys(tokenizer) else None


def is_other_partys(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` was registered with :func:`mark_other_partys`."""
    try:
        return tokenizer in _OTHER_PARTYS
    except TypeError:   # an object that cannot be weakly referenced is no registered tokenizer
        return False


def other_partys_tokens(tokenizer: Any, text: str, add_special_tokens: bool, offsets: bool,
                        seconds: float) -> tuple[list[int], list[tuple[int, int]] | None] | None:
    """(token ids, character spans or None) of ``text`` by the other party's ``tokenizer``, computed in the
    child by the same files and options (``tokenizer(text, add_special_tokens=..., return_offsets_mapping=
    offsets)``); None for a tokenizer not registered with :func:`mark_other_partys` (the caller tokenizes
    it itself). Raises MPUError naming the tokenizer's folder when it takes more than ``seconds`` (wall
    clock) or the run's pace (ISOLATED_MEAN_SECONDS), fails (a Rust panic: onig's retry limit), gives more
    than :func:`most_tokens` or an id outside the model's vocabulary, or needs more than the child's memory."""
    if not is_other_partys(tokenizer):
        return None
    folder, key, vocabulary = _OTHER_PARTYS[tokenizer]
    source = f"{getattr(tokenizer, 'name_or_path', None) or folder}/tokenizer.json"   # the received folder's name
    request = {"text": text, "special": add_special_tokens, "offsets": offsets}
    reply = _asked(_tokenizer_setting(folder, key), request, seconds, source,
                   "the tokenizer", f"the tokenizer did not tokenize one text within {seconds:g} s (a regular "
                   "expression that backtracks)", with_tokenizers=True)
    if isinstance(reply, dict) and isinstance(reply.get("ids"), list) and "offsets" in reply:
        ids, spans = reply["ids"], reply["offsets"]
        if (len(ids) <= most_tokens(text) and all(type(token) is int for token in ids)
                and (spans is None or (len(spans) == len(ids) and all(
                    isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)
                    and 0 <= span[0] <= span[1] <= len(text) for span in spans)))):
            outside = next((token for token in ids if not 0 <= token < vocabulary), None)
            if outside is not None:
                raise MPUError(f"{source}: the tokenizer gives token id {outside}, outside the model's vocabulary of "
                               f"{vocabulary} (config.json vocab_size); refusing it")
            return ids, None if spans is None else [tuple(span) for span in spans]
    if isinstance(reply, dict) and isinstance(reply.get("too_many"), int):
        raise MPUError(f"{source}: the tokenizer gives {reply['too_many']:,} tokens for a text of "
                       f"{len(text):,} characters (the bound is one per UTF-8 byte and 64, {most_tokens(text):,}); "
                       "refusing it")
    if isinstance(reply, dict) and reply.get("memory") is True:
        raise MPUError(f"{source}: the tokenizer {_memory_refusal()} to tokenize one text; refusing it")
    if _error_of(reply):
        raise MPUError(f"{source}: the tokenizer fails on this run's text ({_error_of(reply)}); refusing it")
    raise MPUError(f"{source}: the process running the tokenizer replied what is not a tokenization; refusing it")
