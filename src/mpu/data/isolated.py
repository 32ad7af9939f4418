"""The other party's code, run in a child process: chat templates (Jinja) and the regular expressions of
a tokenizer (a ``tokenizer.json``'s normalizer and pre-tokenizer), which a client receives from the server.

Both can take unbounded time or memory in single operations that nothing in-process can interrupt: a
Jinja comparison of self-referential lists is one C call, a backtracking regular expression one Rust call
(and onig, the engine tokenizers uses, gives up after its retry limit with a Rust panic: a pyo3
``PanicException``, which is a BaseException, and a backtrace printed on stderr). So they run in one child
Python process per process (:class:`Isolated`), started on first use in about 0.6 s:

- the parent waits at most the given seconds per conversation or text, and kills the child past them
  (the next call starts a new one); this works in any thread;
- the child's address space is capped (RLIMIT_AS, Linux) at ``ISOLATED_MEMORY_BYTES`` above its start-up
  size;
- only JSON crosses the pipes, so even a child taken over could return no more than text and numbers;
  its stderr is discarded.

Chat templates are rendered there (:func:`render_conversation`); the other party's tokenizers
(registered with :func:`mark_other_partys`) first tokenize each text there (:func:`probe_tokenizer`), so
that the parent only runs them on texts they have already tokenized within the bound, without failing.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

from mpu.errors import MPUError

# What the child may allocate beyond its size once started (about 180 MB of address space: Python,
# Jinja, transformers' template module, tokenizers). A real conversation renders in a few MB and a text
# tokenizes in less; the template size bounds stop a template near 0.5 GB. This is the backstop for
# what those bounds cannot see, and what stops the child, not the machine, when it is reached.
ISOLATED_MEMORY_BYTES = 1 << 30
# How long the other party's tokenizer may take on one text (a rendered conversation, an answer): a real
# one takes well under a millisecond; a regular expression that backtracks, minutes to hours.
TOKENIZER_SECONDS = 10.0
# How long the child may take to start (imports; a busy 2-core machine takes a few seconds).
_START_SECONDS = 120.0
# The child's source root (the folder holding the mpu package), put first on its path, so that the child
# imports this very module however mpu was installed or put on the path.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_CHILD_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from mpu.data.isolated import _serve; _serve(int(sys.argv[2]))")


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (at most 300 characters), or a note when it cannot be made (the
    error's type is named beside it): a template's exception can carry what ``str()`` refuses
    (raise_exception([10 ** 5000]) raises ValueError; a deeply nested list, RecursionError)."""
    try:
        text = str(err)
        return text.splitlines()[0][:300] if text else ""
    except Exception:   # RecursionError included
        return "a message that cannot be printed"


def _format_advice() -> str:
    from mpu.data.chat_template import FORMAT_ADVICE

    return FORMAT_ADVICE


# --- the child ---------------------------------------------------------------------------------------


def _reply_limit() -> int:
    """The longest reply line, in bytes: a rendered text at its bound, each character a JSON surrogate pair."""
    from mpu.data.chat_template import CHAT_TEMPLATE_MAX_CHARS

    return 12 * CHAT_TEMPLATE_MAX_CHARS + 4096


def _failure(err: BaseException) -> dict[str, Any]:
    if isinstance(err, MemoryError):
        return {"memory": True}
    return {"error": type(err).__name__, "message": first_line(err)}


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


def _probe_reply(tokenizer: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The child's answer to one tokenization request: ``{"tokens": count}``, or what stopped it."""
    try:
        if isinstance(tokenizer, BaseException):   # the tokenizer itself did not load here
            raise tokenizer
        return {"tokens": len(tokenizer.encode(request["text"], add_special_tokens=request["special"]).ids)}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:   # a Rust panic (pyo3's PanicException) is a BaseException
        return _failure(err)


def _load_tokenizer(text: str) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        return err


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


def _serve(memory_bytes: int) -> None:
    """The child's loop (started by :class:`Isolated`): one JSON line in, at most one JSON line out.
    ``{"template", "limits"}`` sets the chat template and the parent's size bounds, ``{"tokenizer"}`` the
    tokenizer (its ``tokenizer.json`` text); ``{"messages", ...}`` asks for a rendering, ``{"text",
    "special"}`` for a tokenization. Ends when stdin closes."""
    import sys

    from mpu.data import chat_template

    send = sys.stdout.buffer
    try:
        chat_template._bounded_environment()   # the imports, before the memory cap
        importlib.import_module("tokenizers")
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
        if "tokenizer" in request:
            tokenizer = _load_tokenizer(request["tokenizer"])
            continue
        reply = _render_reply(template, request) if "messages" in request else _probe_reply(tokenizer, request)
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

    The child (``python -P -c``, its own session, stderr discarded) imports this module and caps its
    address space at ISOLATED_MEMORY_BYTES above its start-up size. The parent sends a template or a
    tokenizer once, then one JSON line per conversation or text, and waits at most the given seconds
    for the reply; past that, or when the child dies or replies nonsense, the child is killed and the
    next request starts a new one. Thread-safe (one lock); a forked process starts its own child.
    """

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._process = None
        self._replies = None
        self._owner = None      # the pid that started the child
        self._memory = None     # the memory cap it was started with
        self._loaded: dict[str, Any] = {}   # what the child holds: "template" (source, bounds), "tokenizer" (digest)

    def ask(self, setting: tuple[str, Any, dict[str, Any]] | None, request: dict[str, Any], seconds: float) -> Any:
        """The child's reply to ``request``, after it holds ``setting`` ((kind, key, message): sent only
        when the child does not hold that key for that kind). Raises _TimedOut past ``seconds``, _Stopped
        when the child dies or replies what is not JSON, MPUError when it cannot start."""
        with self._lock:
            try:
                self._start_if_needed()
                if setting is not None and self._loaded.get(setting[0]) != setting[1]:
                    self._send(setting[2])
                    self._loaded[setting[0]] = setting[1]
                self._send(request)
                return self._reply(seconds)
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

    def _start_if_needed(self) -> None:
        import queue
        import subprocess
        import sys
        import threading

        if self._owner != os.getpid():   # a fork: the parent's child and pipes are not ours
            self._process, self._loaded = None, {}
        if self._process is not None and self._process.poll() is None and self._memory == ISOLATED_MEMORY_BYTES:
            return
        self.close()
        try:
            process = subprocess.Popen([sys.executable, "-P", "-c", _CHILD_CODE, str(_PACKAGE_ROOT),
                                        str(ISOLATED_MEMORY_BYTES)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       start_new_session=True)   # Ctrl-C goes to the parent, which stops it
        except OSError as err:
            raise MPUError(f"cannot start the process that runs the other party's chat template and tokenizer "
                           f"({err}); use --prompt-format plain") from None
        self._process, self._owner, self._memory = process, os.getpid(), ISOLATED_MEMORY_BYTES
        self._replies = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, self._replies, _reply_limit()),
                         daemon=True, name="mpu-isolated").start()
        try:
            ready = self._reply(_START_SECONDS, starting=True)
        except _TimedOut:
            raise MPUError(f"the process that runs chat templates and tokenizers did not start within "
                           f"{_START_SECONDS:g} s") from None
        if ready != {"ready": True}:
            why = ready.get("fatal") if isinstance(ready, dict) else None
            raise MPUError(str(why or "the process that runs chat templates and tokenizers did not start"))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._process.stdin.write(json.dumps(message, default=str).encode("ascii") + b"\n")
            self._process.stdin.flush()
        except OSError:   # the child died: its exit is reported by the reply that does not come
            pass

    def _reply(self, seconds: float, starting: bool = False) -> Any:
        import queue

        try:
            line = self._replies.get(timeout=seconds)
        except queue.Empty:
            raise _TimedOut() from None
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            return json.loads(line)
        except ValueError:   # EOF, a line past the limit, or not JSON: the child is gone or not ours
            self._process.kill()
            code = self._process.wait()
            if starting:
                raise MPUError(f"the process that runs chat templates and tokenizers did not start (exit code "
                               f"{code}; `python -c 'import mpu.data.isolated, tokenizers'` shows why)") from None
            raise _Stopped(code) from None


def _read_lines(stream, replies, limit: int) -> None:
    """The child's stdout, line by line (at most ``limit`` bytes each), into ``replies``; ends at EOF or a
    line past the limit (which is passed on without its newline)."""
    while True:
        try:
            line = stream.readline(limit)
        except (OSError, ValueError):   # closed by close()
            line = b""
        replies.put(line)
        if not line.endswith(b"\n"):
            return


_CHILD = Isolated()
atexit.register(_CHILD.close)


def _asked(setting, request: dict[str, Any], seconds: float, source: str, timed_out: str, advice: str = "") -> Any:
    """The child's reply, or the MPUError naming ``source`` for a timeout (``timed_out``) or a dead child."""
    try:
        return _CHILD.ask(setting, request, seconds)
    except _TimedOut:
        raise MPUError(f"{source}: {timed_out}; refusing it{advice}") from None
    except _Stopped as stopped:
        raise MPUError(f"{source}: the process running it stopped (exit code {stopped.code}), most likely at "
                       f"its memory cap of {ISOLATED_MEMORY_BYTES / 2**30:g} GiB; refusing it{advice}") from None


def _memory_refusal() -> str:
    return f"needed more than {ISOLATED_MEMORY_BYTES / 2**30:g} GiB of memory"


# --- chat templates ----------------------------------------------------------------------------------


def render_conversation(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                        variables: dict[str, Any], seconds: float, source: str) -> str:
    """``messages`` through the chat ``template``, as ``apply_chat_template(tokenize=False)`` renders them
    (:func:`mpu.data.chat_template.render_chat`), in the child: bounded in size by the sandbox hooks, in
    time by ``seconds`` of wall clock per conversation, and in memory by ISOLATED_MEMORY_BYTES. Raises
    MPUError naming ``source`` (where the template came from) when it goes past any bound or fails."""
    from mpu.data import chat_template

    bounds = {name: getattr(chat_template, name) for name in chat_template.BOUND_NAMES}
    setting = ("template", (template, bounds), {"template": template, "limits": bounds})
    request = {"messages": messages, "add_generation_prompt": add_generation_prompt, "variables": variables}
    reply = _asked(setting, request, seconds, source, f"the chat template did not render one conversation within "
                   f"{seconds:g} s (a template with runaway loops)", f". Choose the prompt format explicitly {_format_advice()}")
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
    if isinstance(reply, dict) and isinstance(reply.get("error"), str) and isinstance(reply.get("message"), str):
        raise MPUError(f"{source}: the chat template cannot render this conversation "
                       f"({reply['error'][:100]}: {reply['message'][:300]})")
    raise MPUError(f"{source}: the process rendering the chat template replied what is not a rendering; "
                   f"refusing the template. Choose the prompt format explicitly {_format_advice()}")


# --- the other party's tokenizers --------------------------------------------------------------------

_OTHER_PARTYS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def mark_other_partys(tokenizer: Any) -> None:
    """Register ``tokenizer`` (a transformers tokenizer) as the other party's: from now on, every text the
    project tokenizes with it is tokenized in the child first (:func:`probe_tokenizer`). Only fast
    tokenizers run regular expressions from their files; a slow one is not registered."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        _OTHER_PARTYS[tokenizer] = backend.to_str()


def is_other_partys(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` was registered with :func:`mark_other_partys`."""
    try:
        return tokenizer in _OTHER_PARTYS
    except TypeError:   # an object that cannot be weakly referenced is no registered tokenizer
        return False


def probe_tokenizer(tokenizer: Any, text: str, add_special_tokens: bool, seconds: float) -> None:
    """Tokenize ``text`` with the other party's ``tokenizer`` in the child, before this process does:
    raises MPUError naming its ``tokenizer.json`` when that takes more than ``seconds`` (wall clock), fails
    (a Rust panic: onig's retry limit on a backtracking expression), or needs more than the child's
    memory. Tokenization is deterministic, so this process then tokenizes ``text`` as quickly, without
    failing. Does nothing for a tokenizer not registered with :func:`mark_other_partys`."""
    serialized = _OTHER_PARTYS.get(tokenizer) if is_other_partys(tokenizer) else None
    if serialized is None:
        return
    source = f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}/tokenizer.json"
    digest = hashlib.sha256(serialized.encode("utf-8", "surrogatepass")).hexdigest()
    setting = ("tokenizer", digest, {"tokenizer": serialized})
    reply = _asked(setting, {"text": text, "special": add_special_tokens}, seconds, source,
                   f"the tokenizer did not tokenize one text within {seconds:g} s (a regular expression that "
                   "backtracks)")
    if isinstance(reply, dict) and isinstance(reply.get("tokens"), int):
        return
    if isinstance(reply, dict) and reply.get("memory") is True:
        raise MPUError(f"{source}: the tokenizer {_memory_refusal()} to tokenize one text; refusing it")
    if isinstance(reply, dict) and isinstance(reply.get("error"), str) and isinstance(reply.get("message"), str):
        raise MPUError(f"{source}: the tokenizer fails on this run's text ({reply['error'][:100]}: "
                       f"{reply['message'][:300]}); refusing it")
    raise MPUError(f"{source}: the process running the tokenizer replied what is not a tokenization; refusing it")
