"""A chat template is Jinja code that came with the model: for a client, from the other party. It is
rendered here as ``apply_chat_template(tokenize=False)`` renders it, byte for byte, in transformers' own
Jinja sandbox (:func:`render_chat`), with bounds the sandbox lacks: what one operation may build and what
one rendering builds in all (``CHAT_TEMPLATE_MAX_CHARS``, ``CHAT_TEMPLATE_BUDGET_CHARS``), checked by
sandbox hooks. Because some operations escape every hook, the encoder calls it in a child process that is
killed past ``CHAT_TEMPLATE_SECONDS`` and whose memory is capped (:mod:`mpu.data.isolated`). A template
beyond them is refused with an error naming the file it came from."""

from __future__ import annotations
import contextvars
import functools
import inspect
import itertools
import os
import re
import stat
from collections.abc import MappingView
from pathlib import Path
from typing import Any, Sequence
from mpu.errors import MPUError

# A chat template is Jinja code that came with the model (for a client: from the other party). Jinja's
# sandbox stops attribute tricks and caps each loop at 100,000 iterations, but not nested loops or
# the time they take, so a hostile template could render for hours. A real template renders one
# conversation in milliseconds; this bound is far above that and far below "hung".
CHAT_TEMPLATE_SECONDS = 10.0
# What every refusal of a template tells the user to do instead.
FORMAT_ADVICE = "(--prompt-format plain, or a model name with shipped settings; docs/encoding.md)"


def template_source(tokenizer) -> str:
    """Where a tokenizer's chat template comes from, for error messages: the file of its folder that holds
    it. transformers reads ``chat_template.jinja`` (or ``additional_chat_templates/default.jinja``) before
    the ``chat_template`` entry of ``tokenizer_config.json``; a file counts only when it holds the template
    the tokenizer has (read as transformers reads it, no further than the template's length)."""
    from mpu.data.isolated import loaded_from

    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if not name:
        return "the tokenizer's chat_template"
    folder = loaded_from(tokenizer) or name   # the other party's: the (private) folder it was loaded from
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if isinstance(template, str):
        for relative in ("chat_template.jinja", "additional_chat_templates/default.jinja"):
            if _file_holds(Path(folder, relative), template):
                return f"{name}/{relative}"
    return f"{name}/tokenizer_config.json (chat_template)"


def _file_holds(path: Path, text: str) -> bool:
    """Whether the regular file ``path`` starts with ``text`` and holds nothing more; opened without
    following a link or blocking (a FIFO put there would otherwise hang the caller)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        with open(fd, encoding="utf-8") as handle:   # as transformers reads it: text, universal newlines
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return False
            return handle.read(len(text) + 1) == text
    except (OSError, UnicodeError, ValueError):
        return False


# --- bounding what a chat template builds -----------------------------------------------------------

# The most characters a chat template may render for one conversation, and the largest value (a string, a
# list by its items, a number by its digits) it may build on the way. Far above a real conversation: a TOFU
# row is a few hundred characters, a MUSE chunk 200 words (~1,300), an answer of a few hundred tokens ~2,000,
# and even a row filling a 128k-token context (max_length can be that large) is ~500,000. Far below memory
# trouble: 1,000,000 characters tokenize to at most ~1M tokens, ~0.5 GB at the peak with a tiny vocabulary
# (one token per character; ~0.1 GB with a real one), where the 6M characters one `'x ' * N` rendered before
# took 2.7 GB.
CHAT_TEMPLATE_MAX_CHARS = 1_000_000
# Everything one rendering builds: its output pieces and the results of its operators, filters and calls,
# each counted at least 1. A real template builds a few times its text; without this total, a loop could
# keep piling allowed pieces (a macro's buffer, a namespace) until the time bound.
CHAT_TEMPLATE_BUDGET_CHARS = 10 * CHAT_TEMPLATE_MAX_CHARS
# The longest template source compiled, and the most parse-tree nodes it may have. Compiling is not
# rendering: no time bound or budget covers it, and its cost grows with the source (2 MB of '{{ x }}'
# took 17 s and 3.4 GB; 2.4 MB of '{% call m() %}{% endcall %}' more than 60 s and 2.8 GB). Real chat
# templates are 1-20 KB, the largest released ones (tool-calling templates) under about 30 KB; Llama
# 3.1's 3.8 KB parse to 260 nodes. 256 KB parse in about half a second; the node bound stops before code
# generation, which costs more per node than parsing.
CHAT_TEMPLATE_MAX_SOURCE_CHARS = 256_000
CHAT_TEMPLATE_MAX_NODES = 20_000

# What the budget counts for each object a value holds (a list's items, at any depth) besides its
# characters: Python keeps each in at least ~50 bytes (a str 49 and more, an int 28, a list 56, plus the
# 8-byte reference), so a list of N 1-character strings, counted 3 characters an item, costs ~170 bytes
# an item. So counted, the budget allows at most 10M / 50 = 200,000 objects built in one rendering:
# tens of MB whatever they are, where counting characters alone let ~3M of them (~0.5 GB) through.
_OBJECT_CHARS = 50

# How the bounds are applied. transformers renders a chat template in its own Jinja sandbox
# (transformers.utils.chat_template_utils._compile_jinja_template: an ImmutableSandboxedEnvironment with
# its options, extensions, filters and globals). The sandbox caps a loop at 100,000 iterations but bounds
# no size: 'x' * 10**10, '%1000000000s' % x, join over a range, the padding filters are one operation
# each, and a chain of '~' doubles a string per step. The client renders with an overlay of transformers'
# own environment (same options, extensions, filters and globals, so a real template renders byte for byte
# what apply_chat_template renders) whose class adds Jinja's documented sandbox hooks: intercepted_binops
# with call_binop (* ** % +), call (methods, globals, macros), finalize (every output) and wrapped
# filters; '~' and literal text, which no hook sees, are routed through two filters of ours by rewriting
# the parsed template. Each hook estimates what an operation would build before running it (length times
# count for '*', widths for formatting, separators times items for join, ...), refuses more than
# CHAT_TEMPLATE_MAX_CHARS, and counts what was built against CHAT_TEMPLATE_BUDGET_CHARS. The optimizer is
# off: it would evaluate constant expressions ('x' * 10**10 among them) while compiling, before any hook.
# Rejected: patching transformers' cached compiler (global, every caller), an environment of our own
# (would drift from transformers' filters and globals), parsing template text by hand.
#
# What the hooks cannot see: single C-level operations that no sandbox hook intercepts: comparisons ('==',
# '<', sort, unique) and 'in' on large or deeply shared structures (a list doubled 40 times into itself
# compares 2^40 leaves), hashing of such self-referential tuples (a dict key, a set), subscripts and slices
# kept in a literal ([s[1:], s[2:], ...] builds a copy each, outside any hook), and big-integer division or
# conversion within the allowed sizes. A signal cannot interrupt them either (a handler runs between
# bytecodes). So the rendering itself runs in a child process (mpu.data.isolated): the parent waits at
# most CHAT_TEMPLATE_SECONDS for each conversation and kills the child past it, and the child's address
# space is capped (RLIMIT_AS). The hooks stay: they refuse most inflation with a message saying which
# operation, long before either backstop.


# The most a template may add around the messages' own text in one conversation (headers, turn markers, a
# default system prompt). Real templates add a few hundred characters; the longest default system prompts
# of released templates are about 1,500. Without this bound a template could pad every row to
# CHAT_TEMPLATE_MAX_CHARS, and the client keeps every row's tokens: 36 MB a row, 144 GB for 4,000 rows.
CHAT_TEMPLATE_MAX_OVERHEAD_CHARS = 8_000
# The size bounds, by name: the parent sends its values with each template, and the child applies them.
BOUND_NAMES = ("CHAT_TEMPLATE_MAX_CHARS", "CHAT_TEMPLATE_BUDGET_CHARS", "CHAT_TEMPLATE_MAX_SOURCE_CHARS",
               "CHAT_TEMPLATE_MAX_NODES", "CHAT_TEMPLATE_MAX_OVERHEAD_CHARS")


class TemplateTooLarge(Exception):
    """A chat template would build more than the bounds allow (the encoder names the file)."""


_BUDGET: "contextvars.ContextVar[list[int] | None]" = contextvars.ContextVar("mpu_chat_template_budget", default=None)
_LITERAL_FILTER = "mpu literal"   # names a template cannot write (a filter name is an identifier)
_CONCAT_FILTER = "mpu concat"
_MULTIPLYING_FILTERS = ("join", "replace", "indent", "wordwrap", "format", "tojson", "pprint", "urlize")
_END = object()


def _count(number: int) -> str:
    return f"{number:,}" if number < 10**15 else "more than 10^15"


def _rendered_size(value: Any, limit: int = CHAT_TEMPLATE_MAX_CHARS, per_item: int = 0, per_level: int = 0) -> int:
    """About how many characters ``value`` prints as (``str()``, JSON), counted until it passes ``limit``:
    strings and bytes by length, integers by digits, lists, tuples, sets, dicts and Jinja namespaces by
    their items, each item 1 more (its separator) plus ``per_item``, plus ``per_level`` per nesting level
    (JSON's indentation). Anything else (a range, an iterator, a macro) prints short and counts 1."""
    return _measure(value, limit, per_item, per_level)[0]


def _measure(value: Any, limit: int = CHAT_TEMPLATE_MAX_CHARS, per_item: int = 0,
             per_level: int = 0) -> tuple[int, int]:
    """(``_rendered_size``, how many objects it walked: ``value`` and the items it holds, at any depth)."""
    from jinja2.utils import Namespace

    total = objects = 0
    stack = [iter((value,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        objects += 1
        total += 1 + per_item + per_level * (len(stack) - 1)
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() * 3 // 10   # decimal digits, about
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, dict):
            stack.append(itertools.chain.from_iterable(item.items()))
        elif isinstance(item, (list, tuple, set, frozenset, MappingView)):
            stack.append(iter(item))
        elif isinstance(item, Namespace):   # its attributes are in its (private) __dict__
            stack.append(iter(object.__getattribute__(item, "__dict__").values()))
        if total > limit:
            break
    return total, objects


def _refuse_above(size: int, what: str) -> None:
    if size > CHAT_TEMPLATE_MAX_CHARS:
        raise TemplateTooLarge(f"would build about {_count(size)} characters in one operation ({what}); the limit "
                                f"is {CHAT_TEMPLATE_MAX_CHARS:,}")


def _check_arguments(values: Sequence[Any], what: str) -> None:
    """Each argument at most CHAT_TEMPLATE_MAX_CHARS in size, and no number above it (a width or a count)."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > CHAT_TEMPLATE_MAX_CHARS:
            raise TemplateTooLarge(f"gives a number above {CHAT_TEMPLATE_MAX_CHARS:,} ({what}): a width or count "
                                    "that size would build that many characters")
        _refuse_above(_rendered_size(value), what)


def _built(value: Any, what: str) -> Any:
    """``value``, once checked against the size bound and counted against the rendering's budget."""
    size, objects = _measure(value)
    if size > CHAT_TEMPLATE_MAX_CHARS:
        raise TemplateTooLarge(f"built a value of more than {CHAT_TEMPLATE_MAX_CHARS:,} characters ({what})")
    budget = _BUDGET.get()
    if budget is not None:
        budget[0] -= size + objects * _OBJECT_CHARS
        if budget[0] < 0:
            raise TemplateTooLarge(f"built more than {CHAT_TEMPLATE_BUDGET_CHARS:,} characters in all while "
                                    "rendering one conversation")
    return value


def _format_size(fmt: str, marker: str, values: Sequence[Any]) -> int:
    """About the most ``fmt % values`` (marker "%") or ``fmt.format(*values)`` (marker "{") builds: per
    field, the widest value plus twice the largest number the format writes (a width and a precision), or
    takes from the arguments when it takes widths from there ('%*d', '{:{}}')."""
    fields = fmt.count(marker)
    if not fields:
        return len(fmt)
    widest = max((_rendered_size(value) for value in values), default=0)
    number, texts = 0, [fmt]
    if "*" in fmt if marker == "%" else re.search(r"\{[^{}]*\{", fmt):
        number = max((abs(value) for value in values if isinstance(value, int)), default=0)
        if marker == "{":   # a nested field takes the text of its value: '{:{}}'.format('x', '1000000000')
            texts += [str(value) for value in values if not isinstance(value, int)]
    for digits in (digits for text in texts for digits in re.finditer(r"\d+", text)):
        if len(digits.group()) > 7:
            return CHAT_TEMPLATE_MAX_CHARS + 1
        number = max(number, int(digits.group()))
    return len(fmt) + fields * (widest + 2 * number)


def _join_size(separator: int, items: Any) -> tuple[int, Any]:
    """(about what joining ``items`` with a separator of that length builds, the items): an iterator is
    read here (at most CHAT_TEMPLATE_MAX_CHARS + 1 items) and its items handed on in a list."""
    if not isinstance(items, (str, bytes, bytearray, list, tuple, dict, set, frozenset, range)):
        items = list(itertools.islice(items, CHAT_TEMPLATE_MAX_CHARS + 1))
    total = 0
    for item in items:
        total += separator + _rendered_size(item)
        if total > CHAT_TEMPLATE_MAX_CHARS:
            break
    return total, items


def _replace_size(text: Any, old: Any, new: Any, count: Any) -> int:
    occurrences = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(len(new) - len(old), 0)


def _binop_size(operator: str, left: Any, right: Any) -> int:
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(sequence, (str, bytes, bytearray)):
                return len(sequence) * max(times, 0)
            if isinstance(times, int) and isinstance(sequence, (list, tuple)):
                return _rendered_size(sequence) * max(times, 0)
    if operator == "**" and type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
        return right * left.bit_length() * 3 // 10   # the power's decimal digits, about
    if operator == "%" and isinstance(left, (str, bytes)):
        fmt = left if isinstance(left, str) else left.decode("latin-1")
        values = list(right) if isinstance(right, tuple) else [right, *right.values()] if isinstance(right, dict) \
            else [right]
        return _format_size(fmt, "%", values)
    return _rendered_size(left) + _rendered_size(right)


def _call_size(func: Any, args: tuple, kwargs: dict) -> tuple[int, tuple]:
    """(about what a call builds, its arguments) for the calls that multiply: the str and bytes methods
    join, replace, expandtabs, translate, format and format_map, and Jinja's lipsum; 0 for the others
    (whose result is checked after them)."""
    from jinja2.utils import generate_lorem_ipsum

    if func is generate_lorem_ipsum:
        words = inspect.signature(func).bind(*args, **kwargs)
        words.apply_defaults()
        n, most = words.arguments["n"], words.arguments["max"]
        return (n * most * 12 if isinstance(n, int) and isinstance(most, int) else 0), args
    target = getattr(func, "__wrapped__", func)   # the sandbox wraps str.format and str.format_map
    owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
    if not isinstance(owner, (str, bytes, bytearray)):
        return 0, args
    if name == "join" and args:
        size, items = _join_size(len(owner), args[0])
        return size, (items, *args[1:])
    if name == "replace" and len(args) >= 2:
        return _replace_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1)), args
    if name == "expandtabs":
        tabs = args[0] if args else kwargs.get("tabsize", 8)
        tab = "\t" if isinstance(owner, str) else b"\t"
        return (len(owner) + owner.count(tab) * max(tabs, 0) if isinstance(tabs, int) else 0), args
    if name == "translate" and args and isinstance(owner, str):   # bytes.translate maps byte to byte
        return len(owner) * _largest_entry(args[0]), args
    if name in ("format", "format_map") and isinstance(owner, str):
        values = [*args, *kwargs.values()]
        if name == "format_map" and args and isinstance(args[0], dict):
            values = list(args[0].values())
        return _format_size(owner, "{", values), args
    return 0, args


def _largest_entry(table: Any) -> int:
    """About the most one character becomes through ``str.translate``'s ``table`` (any object it can index:
    a dict by its values, a list or tuple by its items, a string 1, anything else its whole size)."""
    if isinstance(table, str):
        return 1
    entries = table.values() if isinstance(table, dict) else table if isinstance(table, (list, tuple)) else [table]
    return max((_rendered_size(entry) for entry in entries), default=1)


def _filter_size(name: str, arguments: dict, value: str) -> int:
    """About what a multiplying filter builds, from its arguments by name (``value``: the filtered one);
    join's iterator is read and replaced by a list."""
    text = str(arguments[value]) if name in ("replace", "indent", "wordwrap", "format", "urlize") else ""
    if name == "join":
        size, arguments[value] = _join_size(len(str(arguments["d"])), arguments[value])
        return size
    if name == "replace":
        count = arguments["count"]
        return _replace_size(text, str(arguments["old"]), str(arguments["new"]), -1 if count is None else count)
    if name == "indent":
        width = arguments["width"]
        return len(text) + (text.count("\n") + 1) * (len(width) if isinstance(width, str) else max(int(width), 0))
    if name == "wordwrap":
        wrap = arguments["wrapstring"]
        wrap = arguments["environment"].newline_sequence if wrap is None else str(wrap)
        lines = 2 * (len(text) // max(int(arguments["width"]), 1) + text.count("\n") + 1)
        return len(text) + lines * len(wrap)
    if name == "format":
        return _format_size(text, "%", [*arguments["args"], *arguments["kwargs"].values()])
    if name in ("tojson", "pprint"):
        indent = arguments.get("indent")
        level = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 1
        separators = arguments.get("separators") or (", ", ": ")
        return _rendered_size(arguments[value], per_item=2 + sum(len(str(s)) for s in separators),
                              per_level=max(level, 0) + 1)
    if name == "urlize":
        attributes = len(str(arguments["target"] or "")) + len(str(arguments["rel"] or "")) + 64
        return 3 * len(text) + len(text.split()) * attributes
    return 0


def _checked_filter(name: str, func: Any) -> Any:
    """``func`` (a filter of transformers' environment) with its arguments and result checked, and its
    result's size estimated first when it multiplies."""
    first = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0   # a context Jinja passes first
    signature = inspect.signature(func) if name in _MULTIPLYING_FILTERS or name == "sum" else None
    what = f"the {name} filter"

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > first:
            _refuse_above(_rendered_size(args[first]), what)
        _check_arguments([*args[first + 1:], *kwargs.values()], what)
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if name == "sum":
                _check_sum(bound.arguments.get("start", 0))
            _refuse_above(_filter_size(name, bound.arguments, list(signature.parameters)[first]), what)
            args, kwargs = bound.args, bound.kwargs
        return _built(func(*args, **kwargs), what)

    return checked


def _check_sum(start: Any) -> None:
    """The sum filter adds its items to ``start`` one by one; a list, tuple or string ``start`` makes that a
    copy per item, time quadratic in their number. A number ``start`` stops at the first item that is not a
    number (a number plus a list is a TypeError), so only the start needs checking."""
    if not isinstance(start, (int, float)):
        raise TemplateTooLarge(f"sums from a start that is not a number ({type(start).__name__}; the sum filter): "
                               "adding lists or strings one by one copies them per item")


def _literal(context: Any, data: str) -> str:
    """The template's literal text, evaluated (and so counted by finalize) when it is output."""
    return data


def _checked_concat(eval_ctx: Any, parts: tuple) -> str:
    """``a ~ b ~ ...``: Jinja's own join, once the parts' total size is checked."""
    from jinja2.runtime import markup_join, str_join

    total = 0
    for part in parts:
        total += _rendered_size(part)
        _refuse_above(total, "'~'")
    return _built(markup_join(parts) if eval_ctx.autoescape else str_join(parts), "'~'")


def _checked_output(context: Any, value: Any) -> Any:
    return _built(value, "an output")


class _BoundedSandbox:
    """Jinja's sandbox hooks, bounded: mixed into the class of transformers' environment."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context, operator, left, right):
        _refuse_above(_binop_size(operator, left, right), f"'{operator}'")
        return _built(super().call_binop(context, operator, left, right), f"'{operator}'")

    def call(self, context, func, /, *args, **kwargs):
        what = f"calling {str(getattr(func, '__name__', 'a function'))[:60]}"
        _check_arguments([*args, *kwargs.values()], what)
        size, args = _call_size(func, args, kwargs)
        _refuse_above(size, what)
        return _built(super().call(context, func, *args, **kwargs), what)


@functools.lru_cache(maxsize=None)
def _bounded_class(base: type) -> type:
    return type(f"Bounded{base.__name__}", (_BoundedSandbox, base), {})


@functools.lru_cache(maxsize=None)
def _bounded_environment():
    """transformers' chat template environment (an overlay: its options, extensions, filters, globals),
    with the bounded hooks, wrapped filters, finalize, and no optimizer."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        base = _compile_jinja_template("").environment
    except (ImportError, AttributeError) as err:
        raise MPUError(f"cannot render chat templates within bounds with this transformers version ({err}); use "
                       "--prompt-format plain, or the transformers version the project pins") from None
    if not isinstance(base, SandboxedEnvironment):
        raise MPUError("this transformers version renders chat templates outside Jinja's sandbox; refusing to "
                       "render one (use --prompt-format plain)")
    environment = base.overlay(optimized=False, finalize=jinja2.pass_context(_checked_output))
    environment.__class__ = _bounded_class(type(base))   # same attributes; the hooks come from the class
    filters = {name: _checked_filter(name, func) for name, func in base.filters.items()}
    filters[_LITERAL_FILTER] = jinja2.pass_context(_literal)
    filters[_CONCAT_FILTER] = jinja2.pass_eval_context(_checked_concat)
    environment.filters = filters   # a new dict: transformers' environment keeps its own
    return environment


@functools.lru_cache(maxsize=16)
def _bounded_template(source: str):
    """``source`` compiled in the bounded environment, '~' and literal text routed through its filters."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Route(NodeTransformer):
        def visit_Concat(self, node):
            self.generic_visit(node)
            return nodes.Filter(nodes.Tuple(node.nodes, "load", lineno=node.lineno), _CONCAT_FILTER, [], [], None,
                                None, lineno=node.lineno)

        def visit_Output(self, node):
            self.generic_visit(node)
            node.nodes = [nodes.Filter(child, _LITERAL_FILTER, [], [], None, None, lineno=child.lineno)
                          if isinstance(child, nodes.TemplateData) else child for child in node.nodes]
            return node

    environment = _bounded_environment()
    tree = environment.parse(source)
    if next(itertools.islice(tree.find_all(nodes.Node), CHAT_TEMPLATE_MAX_NODES, None), None) is not None:
        raise TemplateTooLarge(f"parses to more than {CHAT_TEMPLATE_MAX_NODES:,} nodes (real chat templates have a "
                               "few hundred to a few thousand); it is not compiled")
    tree = Route().visit(tree)
    tree.set_environment(environment)
    return environment.from_string(tree)


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool, variables: dict[str, Any]) -> str:
    """``messages`` through the chat ``template`` (Jinja source), as ``apply_chat_template(tokenize=False)``
    renders them (transformers' environment; ``variables``: the special tokens and ``date_string``;
    ``tools`` and ``documents`` None; None fields of a message dropped, as transformers drops them).
    Raises TemplateTooLarge when the template is longer than CHAT_TEMPLATE_MAX_SOURCE_CHARS or parses to
    more than CHAT_TEMPLATE_MAX_NODES nodes (checked before it is compiled), when an operation would build
    more than CHAT_TEMPLATE_MAX_CHARS, the rendering more than CHAT_TEMPLATE_BUDGET_CHARS in all, the
    text is longer than CHAT_TEMPLATE_MAX_CHARS, or adds more than CHAT_TEMPLATE_MAX_OVERHEAD_CHARS to the
    messages' own text (checked before anything tokenizes it); Jinja's errors as they come."""
    if len(template) > CHAT_TEMPLATE_MAX_SOURCE_CHARS:
        raise TemplateTooLarge(f"is {len(template):,} characters long; the limit is "
                               f"{CHAT_TEMPLATE_MAX_SOURCE_CHARS:,} (real chat templates are 1-30 KB); it is not "
                               "compiled")
    bounded = _bounded_template(template)
    budget = _BUDGET.set([CHAT_TEMPLATE_BUDGET_CHARS])
    try:
        text = bounded.render(messages=[{key: value for key, value in message.items() if value is not None}
                                        for message in messages],
                              tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables)
    finally:
        _BUDGET.reset(budget)
    if len(text) > CHAT_TEMPLATE_MAX_CHARS:
        raise TemplateTooLarge(f"renders {len(text):,} characters for one conversation; the limit is "
                               f"{CHAT_TEMPLATE_MAX_CHARS:,}")
    own = sum(len(message["content"]) for message in messages if isinstance(message.get("content"), str))
    if len(text) - own > CHAT_TEMPLATE_MAX_OVERHEAD_CHARS:
        raise TemplateTooLarge(f"adds {len(text) - own:,} characters around the conversation's own {own:,}; the "
                               f"limit is {CHAT_TEMPLATE_MAX_OVERHEAD_CHARS:,} (real templates add a few hundred)")
    return text
