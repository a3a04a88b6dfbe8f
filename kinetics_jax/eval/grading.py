"""Answer extraction and equivalence: the grader of every math benchmark (KINETICS.md §4).

    answer = extract_answer(text)          # "\\frac{1}{2}" from "... $\\boxed{\\frac{1}{2}}$. I hope it is correct"
    correct = grade(text, gold="0.5")      # True
    answers_equivalent("x=5", "5")         # True (used to group answers for majority voting)

Extraction (`extract_answer`), in order:
1. The content of the LAST complete `\\boxed{...}` / `\\boxed {...}` / `\\fbox{...}` anywhere in the text (nested and
   escaped braces handled; an empty or unterminated box is skipped). This covers the Kinetics final sentence
   "Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct".
2. Only when there is no box, the text fallbacks, searched in the *response part* only:
   a. the Kinetics sentence without a box, "final answer is: X" (last occurrence);
   b. "answer is X" / "Answer: X" (last occurrence; "**Answer:** X" too).
   X runs to the end of its line, cut at the first sentence end (". "), "I hope it is correct", and stripped of
   `$` and `**`.
3. Otherwise None.

Thinking rule (Qwen3 thinking mode writes "<think> ... </think> response"): the response part is the text after
the last `</think>`; while a `<think>` block is still open (a trace cut mid-thought) the response part is empty;
text without think tags is all response. A box counts wherever it is, so a box inside the thinking is the answer
when no later box follows (math-verify on the raw text does the same, and it lets the long-CoT truncation metric
credit a trace cut after it already boxed its answer). The plain-text fallbacks never look inside the thinking,
where "the answer is 5... wait" is tentative.

Equivalence (`grade`, `answers_equivalent`): both strings are parsed by math-verify as `$\\boxed{...}$` (LaTeX,
then plain expression) and compared with `math_verify.verify(gold, target)`. Before that, two exact shortcuts
run in-process:
- integers: both sides match `[+-]?digits` (thousands separators "1,000" / "1{,}000" allowed; a trailing period
  ignored) -> compared as integers. This is the AIME normalisation: "033" == "33". It agrees with math-verify on
  every case we know; it is there for speed. "33.0" is not an integer string, so math-verify decides (True).
- identical strings (after stripping whitespace and `$`) -> equal.
A parse failure scores False.

Timeouts and threads: math-verify's own timeouts use `signal.alarm`, which works only in the main thread and
cannot interrupt a long C-level computation (a power tower like 9^{9^{9^{9^9}}} spends minutes in one big-int
pow; 3000 nested parentheses stall the LaTeX parser). So math-verify runs with its timeouts off in persistent
worker processes (a plain `python -c` child that loads only this file, math-verify and sympy; ~1 s to start, once
per process). Each comparison has a deadline (`timeout_s`); past it the worker is killed, a warning is logged,
the comparison counts as not equal, and the next call starts a fresh worker (so a call's wall time is at most
`timeout_s` plus, when no worker is idle, one worker start). Workers are pooled: concurrent
callers (threads) each get their own, so `grade` is safe to call from any thread. Results, timeouts included,
are memoised per process, so a repeated pathological answer costs its timeout once. POSIX only.

Cost: integer pairs and identical strings take microseconds; other easy pairs take one math-verify parse of the
prediction (~1-3 ms; the gold's parse is cached) plus a pipe round trip (~0.1 ms).
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_KINETICS_SENTENCE = re.compile(r"final answer is\s*:?", re.IGNORECASE)  # the phrases before a fallback answer
_ANSWER_IS = re.compile(r"\banswer\**\s*(?:is\b|:)\**\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\s*I hope it is correct", re.IGNORECASE)


def _box_content(text: str, open_brace: int) -> str | None:
    """The text between text[open_brace] == "{" and its matching "}" (escaped braces \\{ \\} do not count), or
    None when the box is never closed."""
    depth = 0
    i = open_brace
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character (\{, \}, \\, or the first letter of a command)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1:i]
        i += 1
    return None


def _last_box(text: str) -> str | None:
    """The content of the last complete, non-empty box in `text`."""
    for match in reversed(list(_BOX_START.finditer(text))):
        content = _box_content(text, match.end() - 1)
        if content is not None and content.strip():
            return content.strip()
    return None


def _response_part(text: str) -> str:
    """The text after the last </think>; "" inside an unterminated <think> block; all of it without tags."""
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>"):]
    return "" if "<think>" in text else text


def _clean_value(value: str) -> str:
    """A fallback answer's text: up to the first sentence end, without $ and ** decoration."""
    end = _SENTENCE_END.search(value)
    if end is not None:
        value = value[:end.start()]
    return value.strip().strip("*").strip().strip("$").strip().rstrip(".").strip()


def _last_phrase(pattern: re.Pattern[str], text: str) -> str | None:
    """The non-empty value after the last occurrence of `pattern`: the rest of its line, cleaned."""
    for match in reversed(list(pattern.finditer(text))):
        line_end = text.find("\n", match.end())
        value = _clean_value(text[match.end():None if line_end < 0 else line_end])
        if value:
            return value
    return None


def extract_answer(text: str) -> str | None:
    """The final answer written in a model's output, or None (see the module docstring for the rules)."""
    boxed = _last_box(text)
    if boxed is not None:
        return boxed
    response = _response_part(text)
    return _last_phrase(_KINETICS_SENTENCE, response) or _last_phrase(_ANSWER_IS, response)


# ---------------------------------------------------------------------------------------------------------------
# Exact shortcuts (no math-verify needed)
# ---------------------------------------------------------------------------------------------------------------

_INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)")


def _normalise(answer: str) -> str:
    return answer.strip().strip("$").strip()


def _as_integer(answer: str) -> int | None:
    """"033" -> 33, "-1,000" -> -1000, "12." -> 12; None for anything that is not an integer string."""
    text = _normalise(answer).rstrip(".")
    if not _INTEGER.fullmatch(text):
        return None
    return int(text.replace("{,}", "").replace(",", ""))


# ---------------------------------------------------------------------------------------------------------------
# math-verify worker processes
# ---------------------------------------------------------------------------------------------------------------

_WORKER_START_TIMEOUT_S = 120.0  # imports only (sympy, math-verify); the per-comparison deadline starts after
_WORKER_MEMORY_BYTES = 4 << 30  # address-space cap: a runaway big-int computation fails with MemoryError
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
    "spec = importlib.util.spec_from_file_location('_kinetics_grading_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._serve()\n"
)


def _serve() -> None:
    """The worker's main loop: one JSON [gold, target] per stdin line -> "1" or "0" per stdout line."""
    import functools
    import resource
    import signal

    import math_verify

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C; the worker ends on stdin EOF
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices: the parent enforces it
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > _WORKER_MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, hard))

    @functools.lru_cache(maxsize=4096)
    def parse(answer: str) -> tuple:
        return tuple(math_verify.parse(f"$\\boxed{{{answer}}}$", parsing_timeout=None))

    def verify(gold: str, target: str) -> bool:
        gold_parsed, target_parsed = parse(gold), parse(target)
        if not gold_parsed or not target_parsed:
            return False
        return bool(math_verify.verify(list(gold_parsed), list(target_parsed), timeout_seconds=None))

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            gold, target = json.loads(line)
            result = verify(gold, target)
        except Exception:  # noqa: BLE001 - any failure (parse error, MemoryError, RecursionError) is "not equal"
            result = False
        sys.stdout.write("1\n" if result else "0\n")
        sys.stdout.flush()


class _Worker:
    """One math-verify child process, used by one caller at a time."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)
        if self._read_line(_WORKER_START_TIMEOUT_S) != "ready":
            self.kill()
            raise RuntimeError("the math-verify grading worker failed to start (its error is on stderr)")

    def _read_line(self, timeout_s: float) -> str | None:
        """The next stdout line, or None on timeout or if the worker died."""
        if not self._selector.select(timeout_s):
            return None
        line = self._proc.stdout.readline()
        return line.decode().strip() if line else None

    def verify(self, gold: str, target: str, timeout_s: float) -> bool | None:
        """math_verify.verify(parse(gold), parse(target)); None when it did not answer within timeout_s."""
        try:
            self._proc.stdin.write(json.dumps([gold, target]).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:  # the worker died
            return None
        line = self._read_line(timeout_s)
        return None if line is None else line == "1"

    def exit_code(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._release()

    def close(self) -> None:
        """Ends the worker politely (stdin EOF), killing it if it does not exit within a second."""
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._release()

    def _release(self) -> None:
        self._selector.close()
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                pipe.close()
            except OSError:  # a write buffered for a dead worker cannot be flushed; nothing to keep
                pass


class _WorkerPool:
    """Idle workers; a caller takes one (or starts one when none is idle) and returns it after a clean answer."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def verify(self, gold: str, target: str, timeout_s: float) -> bool | str:
        """The worker's answer, or a string saying why there is none (timeout, or the worker died)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's workers
                self._idle, self._pid = [], os.getpid()
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
        result = worker.verify(gold, target, timeout_s)
        if result is not None:
            with self._lock:
                self._idle.append(worker)
            return result
        exit_code = worker.exit_code()
        worker.kill()  # a runaway: killing the process is the only way to stop a C-level sympy computation
        return f"timed out after {timeout_s:.1f} s" if exit_code is None else f"worker died (exit code {exit_code})"

    def close(self) -> None:
        with self._lock:
            idle, self._idle = (self._idle if self._pid == os.getpid() else []), []
        for worker in idle:
            worker.close()


_POOL = _WorkerPool()
atexit.register(_POOL.close)

# ---------------------------------------------------------------------------------------------------------------
# Comparison with memoisation
# ---------------------------------------------------------------------------------------------------------------

_CACHE_SIZE = 1 << 16
# (gold, target) -> the result, or (a float) the timeout in seconds that the comparison exceeded; LRU order.
_cache: collections.OrderedDict[tuple[str, str], bool | float] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _compare(gold: str, target: str, timeout_s: float) -> bool:
    """Is `target` an acceptable answer for `gold`? (math-verify's asymmetric verify, behind the shortcuts.)"""
    gold_int, target_int = _as_integer(gold), _as_integer(target)
    if gold_int is not None and target_int is not None:
        return gold_int == target_int
    if _normalise(gold) == _normalise(target):
        return True
    key = (gold, target)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if isinstance(cached, bool):
        return cached
    if isinstance(cached, float) and timeout_s <= cached:
        return False  # already exceeded a deadline at least this long
    result = _POOL.verify(gold, target, timeout_s)
    if isinstance(result, str):
        log.warning("grading %s; counted as wrong: gold=%r answer=%r", result, _shorten(gold), _shorten(target))
    with _cache_lock:
        _cache[key] = result if isinstance(result, bool) else float(timeout_s)
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result is True


def _gold_answer(gold: str) -> str:
    """A gold answer string; one written as "\\boxed{X}" means X."""
    return _last_box(gold) or gold.strip()


def grade(prediction_text: str, gold: str, *, timeout_s: float = 5.0) -> bool:
    """Is the final answer of `prediction_text` (see `extract_answer`) equivalent to `gold`? No answer, a parse
    failure, or a comparison running past `timeout_s` seconds (logged) scores False. Thread-safe."""
    answer = extract_answer(prediction_text)
    return answer is not None and _compare(_gold_answer(gold), answer, timeout_s)


def answers_equivalent(a: str, b: str, *, timeout_s: float = 5.0) -> bool:
    """Are two extracted answers the same answer? Symmetric: true when math-verify accepts either one as an
    answer to the other (e.g. "x=5" and "5"; "\\frac{1}{2}" and "0.5"). `timeout_s` bounds each direction."""
    return _compare(a, b, timeout_s) or _compare(b, a, timeout_s)


def answer_is_correct(answer: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
    """`grade` for an already extracted answer (None -> False)."""
    return answer is not None and _compare(_gold_answer(gold), answer, timeout_s)
