"""Answer extraction and equivalence: the grader of every math benchmark (docs/evaluation.md).

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
  The integers are compared as canonical digit strings (sign, no leading zeros), not with int(): exact and
  linear at any length (int() refuses strings over 4300 digits).
- identical strings (after stripping whitespace and `$`) -> equal.
A parse failure scores False. An answer (either side) over `_MAX_VERIFY_CHARS` = 2000 characters that no shortcut
decides is not sent to math-verify: it scores False with a logged warning (memoised like a timeout). Benchmark
answers are a few hundred characters at most, so such an answer is garbage (a runaway box); the bound keeps
megabytes of it from being shipped to and parsed by a worker. It does not bound math-verify's time (201
characters of nested parentheses stall it): the timeout does.

Bounds on extraction: `extract_answer` is linear in len(text) whatever the text (evaluate.py re-extracts every
trace at each truncation budget). Boxes are resolved from the last one back, each stepping over the later boxes
it contains and stopping at an unterminated one, so no character is scanned twice (and usually only the last
box's content is read); a fallback value is read only up to its end; no regex backtracks over a run of text more
than once; the think-tag split is one rfind. About 1-3 ms per MB of ordinary text.

Timeouts and threads: math-verify's own timeouts use `signal.alarm`, which works only in the main thread and
cannot interrupt a long C-level computation (a power tower like 9^{9^{9^{9^9}}} spends minutes in one big-int
pow; 100 nested parentheses stall the LaTeX parser for minutes). So math-verify runs with its timeouts off in
persistent worker processes (a plain `python -c` child that loads only this file, math-verify and sympy; ~1 s to
start, once per process). Each comparison has a deadline (`timeout_s`); past it the worker is killed, a warning is
logged, the comparison counts as not equal, and the next call starts a fresh worker (so a call's wall time is at
most `timeout_s` plus, when no worker is idle, one worker start). Workers are pooled: concurrent callers (threads)
each get their own, so `grade` is safe to call from any thread. Results, timeouts included,
are memoised per process, so a repeated pathological answer costs its timeout once. POSIX only.

Orphans: a worker dies with the process that started it, even mid-computation (evaluate.py killed while a
comparison runs must not leave a worker spinning). On Linux the kernel SIGKILLs it (PR_SET_PDEATHSIG, set first
thing in the worker); everywhere a watchdog thread in the worker exits when os.getppid() changes, which works
while the worker runs Python code but not inside one GIL-holding big-int pow. Linux sends that signal when the
*thread* that started the child ends, so all workers are started by one long-lived daemon thread (`_Spawner`),
never by the (possibly short-lived) calling thread.

Cost: integer pairs and identical strings take microseconds; other easy pairs take one math-verify parse of the
prediction (~1-3 ms; the gold's parse is cached) plus a pipe round trip (~0.1 ms).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import json
import logging
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
import unicodedata

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# From a position: the text up to and including the next brace that is not escaped (\{, \}, and the character
# after any other backslash are skipped). Used with .match, never .search: every character has one way to match,
# so a failed match backtracks linearly, once.
_NEXT_BRACE = re.compile(r"[^\\{}]*(?:\\.[^\\{}]*)*([{}])", re.DOTALL)
_KINETICS_SENTENCE = re.compile(r"final answer is\s*:?", re.IGNORECASE)  # the phrases before a fallback answer
_ANSWER_IS = re.compile(r"\banswer\**\s*(?:is\b|:)\**\s*:?", re.IGNORECASE)
# Where a fallback answer ends: its line end, a sentence end (". "), or "I hope it is correct". (No leading \s*
# before "I hope": it made every search quadratic in a run of whitespace; the value is stripped anyway.)
_VALUE_END = re.compile(r"\n|\.(?=\s|$)|I hope it is correct", re.IGNORECASE)


def _closing_brace(text: str, open_brace: int, closes: dict[int, int | None]) -> int | None:
    """The position of the "}" matching text[open_brace] == "{", or None when it is never closed. `closes` holds
    the boxes that start after open_brace (box brace -> its closing brace, or None): a complete one is stepped
    over at once, and meeting an unterminated one means this brace is never closed either."""
    depth, position = 1, open_brace + 1
    while (match := _NEXT_BRACE.match(text, position)) is not None:
        brace = match.start(1)
        position = brace + 1
        if text[brace] == "}":
            depth -= 1
            if depth == 0:
                return brace
        elif brace in closes:
            if closes[brace] is None:
                return None
            position = closes[brace] + 1
        else:
            depth += 1
    return None


def _last_box(text: str) -> str | None:
    """The content of the last complete, non-empty box in `text`. The boxes are resolved from the last one back,
    each stepping over the later boxes it contains, so no character is scanned twice: linear in len(text), and
    usually only the last box's content is read."""
    closes: dict[int, int | None] = {}
    for open_brace in reversed([match.end() - 1 for match in _BOX_START.finditer(text)]):
        close = closes[open_brace] = _closing_brace(text, open_brace, closes)
        if close is not None and (content := text[open_brace + 1:close].strip()):
            return content
    return None


def _response_part(text: str) -> str:
    """The text after the last </think>; "" inside an unterminated <think> block; all of it without tags."""
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>"):]
    return "" if "<think>" in text else text


def _clean_value(value: str) -> str:
    """A fallback answer's text without $ and ** decoration."""
    return value.strip().strip("*").strip().strip("$").strip().rstrip(".").strip()


def _last_phrase(pattern: re.Pattern[str], text: str) -> str | None:
    """The non-empty value after the last occurrence of `pattern`: up to its end (`_VALUE_END`), cleaned. Linear:
    a value is read only up to its end, and a value that cleans to "" holds no later occurrence of the pattern."""
    for match in reversed(list(pattern.finditer(text))):
        end = _VALUE_END.search(text, match.end())
        value = _clean_value(text[match.end():len(text) if end is None else end.start()])
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

_INTEGER = re.compile(r"([+-]?)(\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)")


def _normalise(answer: str) -> str:
    return answer.strip().strip("$").strip()


def _as_integer(answer: str) -> str | None:
    """The canonical digits of an integer answer: "033" -> "33", "-1,000" -> "-1000", "12." -> "12", "-0" -> "0";
    None for anything that is not an integer string. A string, not an int: exact and linear at any length (int()
    refuses strings over 4300 digits). Non-ASCII decimal digits ("٣٣") are read as int() reads them."""
    match = _INTEGER.fullmatch(_normalise(answer).rstrip("."))
    if match is None:
        return None
    digits = match[2].replace("{,}", "").replace(",", "")
    if not digits.isascii():
        digits = "".join(str(unicodedata.decimal(digit)) for digit in digits)
    digits = digits.lstrip("0") or "0"
    return "-" + digits if match[1] == "-" and digits != "0" else digits


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
    "module._serve(int(sys.argv[2]))\n"
)
_PARENT_POLL_S = 0.5  # how often a worker's watchdog thread checks that its parent is alive
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent_pid: int) -> None:
    """Makes this process (a worker) end when `parent_pid`, its parent, dies, even in the middle of a computation.
    On Linux the kernel SIGKILLs it (PR_SET_PDEATHSIG), which also stops a C-level computation that holds the GIL;
    `_watch_parent` is the portable fallback (and a second line on Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _watch_parent(parent_pid)


def _watch_parent(parent_pid: int) -> None:
    """Exits this process now if `parent_pid` is no longer its parent, else as soon as a daemon thread polling
    os.getppid() sees that. os._exit needs the GIL, which Python code (sympy) releases every few milliseconds but
    one C-level big-int pow does not: there only PR_SET_PDEATHSIG helps."""
    if os.getppid() != parent_pid:  # the parent already died (before PR_SET_PDEATHSIG took effect, say)
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _serve(parent_pid: int) -> None:
    """The worker's main loop: one JSON [gold, target] per stdin line -> "1" or "0" per stdout line."""
    _exit_with_parent(parent_pid)
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


class _Spawner:
    """Starts the worker processes, all from one thread that lives as long as this process. Linux delivers a
    child's PR_SET_PDEATHSIG when the *thread* that started it ends, so a worker started by a short-lived caller
    thread (a thread pool's) would be killed with that thread, and its next comparison would count as wrong."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._requests: queue.SimpleQueue[concurrent.futures.Future[subprocess.Popen[bytes]]] = queue.SimpleQueue()

    def start_worker(self) -> subprocess.Popen[bytes]:
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        with self._lock:
            if self._pid != os.getpid():  # the first call, or a forked child (threads do not survive a fork)
                self._pid, self._requests = os.getpid(), queue.SimpleQueue()
                threading.Thread(target=self._run, args=(self._requests,), name="grading-spawner",
                                 daemon=True).start()
            self._requests.put(future)
        return future.result()

    @staticmethod
    def _run(requests: queue.SimpleQueue[concurrent.futures.Future[subprocess.Popen[bytes]]]) -> None:
        while True:
            future = requests.get()
            try:
                future.set_result(subprocess.Popen(
                    [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__), str(os.getpid())],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which raises it
                future.set_exception(error)


_SPAWNER = _Spawner()


class _Worker:
    """One math-verify child process, used by one caller at a time."""

    def __init__(self) -> None:
        self._proc = _SPAWNER.start_worker()
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

_MAX_VERIFY_CHARS = 2000  # a longer answer is not sent to math-verify (see the module docstring)
_CACHE_SIZE = 1 << 16
# (gold, target) -> the result, or (a float) the timeout in seconds that the comparison exceeded; LRU order.
_cache: collections.OrderedDict[tuple[str, str], bool | float] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _verify(gold: str, target: str, timeout_s: float) -> bool | float:
    """math-verify's verdict, or (a float) the timeout that the comparison exceeded: what `_cache` keeps. A pair
    without a verdict is logged as counted wrong."""
    if max(len(gold), len(target)) > _MAX_VERIFY_CHARS:
        log.warning("grading skipped (an answer is over %d characters); counted as wrong: gold=%r answer=%r",
                    _MAX_VERIFY_CHARS, _shorten(gold), _shorten(target))
        return False
    result = _POOL.verify(gold, target, timeout_s)
    if isinstance(result, bool):
        return result
    log.warning("grading %s; counted as wrong: gold=%r answer=%r", result, _shorten(gold), _shorten(target))
    return float(timeout_s)


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
    outcome = _verify(gold, target, timeout_s)
    with _cache_lock:
        _cache[key] = outcome
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return outcome is True


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
