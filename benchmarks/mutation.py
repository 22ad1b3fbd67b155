"""Mutation testing of minidiff: make one small, plausible bug at a time in a module, run the tests
that exercise it, and count how many bugs the tests catch ("kill").

    python benchmarks/mutation.py                      # every module of MODULES
    python benchmarks/mutation.py schedule sde         # some of them
    python benchmarks/mutation.py --list diffusion     # the mutants, without running anything
    python benchmarks/mutation.py --max-per-module 0   # every mutant, no sampling
    python benchmarks/mutation.py --gaps               # issue 29's sixteen bugs, each caught?

The mutants come from Python's ``ast``: arithmetic and comparison operators swapped (+ −, × ÷,
** ×, < ≤, == ≠, …), a number changed (n → n + 1, x → x/2), a sign dropped, a square root dropped, an
index shifted by one (``a[t]`` → ``a[t - 1]``), ``and``/``or`` swapped, ``not`` dropped, a check
skipped (``raise`` → ``pass``), an in-place update skipped, and one schedule array read for its
neighbour (α ↔ ᾱ, ᾱ ↔ ᾱ_{t−1}, β ↔ β̃, √ᾱ ↔ √(1 − ᾱ), the two posterior-mean coefficients).
Docstrings, f-strings and the text of error messages are left alone. Each mutant is keyed by
``module:function: original → mutated`` (with ``#n`` when that text occurs n times in the function),
which stays the same as long as the function's code does.

How a mutant is run. The checkout (with its built Cython extension) is copied to a temporary
folder, and each mutant is written into the copy's module and undone there: the checkout itself is
never touched, so it can be edited while a run goes on, and no MNIST sits beside the copy, so the
tests see none, as in a plain checkout. Each rewrite gets a modification time of its own, so no
stale bytecode is ever imported. The tests run in a fork of a process that has imported pytest and
NumPy but not minidiff. Only the tests that run the mutated function run (``-x``, fastest first):
a tracing run of the module's test files records which tests call which function, in the test, in
the setup of its fixtures or while its file is collected; a mutant in a function that no test runs
cannot be told from the original, and survives without a run. Module-level code (constants, rule
tables) runs on import, so its mutants run every test file mapped to the module.

Why a self-written mutator rather than mutmut or cosmic-ray (neither was tried): no new dependency
and nothing to configure around the in-place Cython build (the copy takes it along); mutations that
know diffusion — a schedule array read for its neighbour (α for ᾱ, ᾱ_t for ᾱ_{t−1}) and an index
off by one are the bugs this library most plausibly has, and generic tools do not make them; and
per-function test selection from one tracing run, which keeps a module to minutes on 2 cores.

Sampling: a module with more than ``--max-per-module`` mutants (default 60) is sampled with a fixed
seed, the same sample every run, stated in the report. Surviving mutants judged equivalent (no
test can tell them from the original: e.g. a threshold moved inside a float that is never hit)
are listed with their reason in ``benchmarks/mutation_equivalent.json`` and set aside from the
kill rate. Adding a module is one line in MODULES.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORED = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", "runs")
EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.json")

# module → the test files that exercise it (a new module is one more line).
MODULES = {
    "schedule": ["test_schedule.py", "test_diffusion.py", "test_sampling.py"],
    "diffusion": ["test_diffusion.py", "test_learned_variance.py", "test_sampling.py"],
    "sampling": ["test_sampling.py", "test_learned_variance.py"],
    "sde": ["test_sde.py", "test_oracles.py"],
    "guidance": ["test_guidance.py"],
    "editing": ["test_guidance.py"],
    "likelihood": ["test_likelihood.py", "test_learned_variance.py"],
    "optim": ["test_optim.py"],
    "checkpoint": ["test_checkpoint.py", "test_learned_variance.py", "test_guidance.py", "test_train.py"],
    "config": ["test_config.py", "test_checkpoint.py"],
    "metrics": ["test_metrics.py"],
    "objectives/edm": ["test_objectives.py", "test_objectives_cli.py", "test_derivations.py", "test_api_checks.py"],
    "objectives/flow": ["test_objectives.py", "test_objectives_cli.py", "test_derivations.py", "test_api_checks.py",
                        "test_reflow.py"],
    "objectives/conversions": ["test_objectives.py", "test_objectives_cli.py", "test_derivations.py", "test_api_checks.py"],
}

# The sixteen bugs of issue 29 that the suite once missed, as (module, text, bug, test files): ``--gaps``
# applies each alone and checks that the default suite, without MNIST or MPI, now fails.
GAPS = [
    ("schedule", "v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)",
     "v_start, v_end = sigmoid(start), sigmoid(end)", ["test_schedule.py"]),
    ("diffusion", "return HYBRID_LAMBDA * schedule.T * vb_terms_bpd", "return HYBRID_LAMBDA * vb_terms_bpd",
     ["test_learned_variance.py"]),
    ("diffusion", "s = xp.maximum(s, 1.0).astype(", "s = s.astype(", ["test_diffusion.py"]),
    ("diffusion", "objective = objective + vlb * Tensor(to_device(importance.astype(np.float32), device))",
     "objective = objective + vlb", ["test_learned_variance.py"]),
    ("sampling", "variance = eta**2 * (1.0", "variance = eta * (1.0", ["test_sampling.py"]),
    ("sde", "standard_normal(rng, x), schedule.alphas[t], snr)", "standard_normal(rng, x), schedule.alphas_cumprod[t], snr)",
     ["test_sde.py"]),
    ("editing", "xp.broadcast_to(known, x.shape), t_batch - 1,", "xp.broadcast_to(known, x.shape), t_batch,",
     ["test_guidance.py"]),
    ("editing", "x = q_step(schedule, x, _timestep_batch(t_next, x)", "x = q_step(schedule, x, _timestep_batch(t, x)",
     ["test_guidance.py"]),
    ("checkpoint", '"timesteps", "prediction")', '"timesteps")', ["test_checkpoint.py"]),
    ("checkpoint", "and 0 <= v < 1, ", "and 0 <= v <= 1, ", ["test_checkpoint.py"]),
    ("checkpoint", "model_keys = [key for key in expected_model if", 'model_keys = [key for key in ("base_channels",) if',
     ["test_checkpoint.py"]),
    ("metrics", "np.partition(d, k, axis=1)[:, k]", "np.partition(d, k - 1, axis=1)[:, k - 1]", ["test_metrics.py"]),
    ("metrics", "np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)",
     "np.cov(a, rowvar=False, bias=True), b.mean(0), np.cov(b, rowvar=False, bias=True)", ["test_metrics.py"]),
    ("datasets", "/ np.float32(127.5) - 1", "/ np.float32(128) - 1", ["test_data.py"]),
    ("distributed", "buffer /= self.size", "pass", ["test_distributed.py"]),
    ("metrics", "precision_recall(real_feats, fake_feats, k=k)", "precision_recall(fake_feats, real_feats, k=k)",
     ["test_metrics.py"]),
]

# One schedule array read for the one it is most plausibly confused with.
NEIGHBOURS = {
    "alphas": "alphas_cumprod", "alphas_cumprod": "alphas_cumprod_prev", "alphas_cumprod_prev": "alphas_cumprod",
    "alphas_cumprod_next": "alphas_cumprod", "betas": "posterior_variance", "posterior_variance": "betas",
    "sqrt_alphas_cumprod": "sqrt_one_minus_alphas_cumprod", "sqrt_one_minus_alphas_cumprod": "sqrt_alphas_cumprod",
    "posterior_mean_coef1": "posterior_mean_coef2", "posterior_mean_coef2": "posterior_mean_coef1",
}
BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
INDEX_NAMES = {"t", "i", "j", "k", "n", "index", "step", "start", "t_next"}  # integer indices: a[t] → a[t - 1]


@dataclass
class Mutant:
    module: str
    function: str  # qualified name of the innermost def or class, "<module>" at the top level
    lines: tuple[int, int]  # the function's first and last line (for the test selection)
    start: int  # character span of the replaced source
    end: int
    original: str
    replacement: str

    @property
    def description(self) -> str:
        return f"{self.original} → {self.replacement}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Generator(ast.NodeVisitor):
    """Collects the mutants of one module's source, function by function."""

    def __init__(self, module: str, source: str):
        self.module, self.source, self.mutants, self.scope = module, source, [], []
        self.line_offsets = [0]
        for line in source.splitlines(keepends=True):
            self.line_offsets.append(self.line_offsets[-1] + len(line))

    def offset(self, line: int, col: int) -> int:
        # ast columns count UTF-8 bytes; the file is read as text, so convert within the line.
        text = self.source[self.line_offsets[line - 1]:self.line_offsets[line]]
        return self.line_offsets[line - 1] + len(text.encode()[:col].decode())

    def add(self, node, replacement: str, original: str | None = None):
        start, end = self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)
        function, lines = self.scope[-1] if self.scope else ("<module>", (0, 0))
        self.mutants.append(Mutant(self.module, function, lines, start, end,
                                   _one_line(original or self.source[start:end]), replacement))

    def expression(self, node, mutated):
        self.add(node, "(" + ast.unparse(mutated) + ")", ast.unparse(node))

    # Scopes ------------------------------------------------------------------------------------
    def _scoped(self, node):
        name = ".".join([self.scope[-1][0]] if self.scope else []) + ("." if self.scope else "") + node.name
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        self.scope.append((name, (first, node.end_lineno)))
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        for child in body:
            self.visit(child)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(default)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Module(self, node):
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        for child in body:
            if not (isinstance(child, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in child.targets)):
                self.visit(child)

    # What is left alone ------------------------------------------------------------------------
    def visit_JoinedStr(self, node):  # f-strings: messages, not maths
        pass

    def visit_Raise(self, node):  # a skipped check; the message itself is not mutated
        self.add(node, "pass")

    def visit_Expr(self, node):
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)

    # Mutations ---------------------------------------------------------------------------------
    def visit_AugAssign(self, node):
        self.add(node, "pass")
        self.generic_visit(node)

    def visit_BinOp(self, node):
        swap = BINARY.get(type(node.op))
        if swap is not None:
            self.expression(node, ast.BinOp(node.left, swap(), node.right))
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            swap = COMPARE.get(type(op))
            if swap is not None:
                ops = list(node.ops)
                ops[i] = swap()
                self.expression(node, ast.Compare(node.left, ops, node.comparators))
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        self.expression(node, ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values))
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not)):
            self.expression(node, node.operand)
        if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):  # −1: its sign is enough
            self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        changed = value + 1 if isinstance(value, int) else (value / 2 if value else 1.0)
        self.add(node, repr(changed))

    def visit_Call(self, node):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "sqrt" and len(node.args) == 1 and not node.keywords:
            self.expression(node, node.args[0])
        self.generic_visit(node)

    def visit_Subscript(self, node):
        index = node.slice
        if isinstance(index, ast.Name) and index.id in INDEX_NAMES:
            self.expression(node, ast.Subscript(node.value, ast.BinOp(index, ast.Sub(), ast.Constant(1)), node.ctx))
        self.generic_visit(node)

    def visit_Attribute(self, node):
        neighbour = NEIGHBOURS.get(node.attr)
        if neighbour is not None and isinstance(node.ctx, ast.Load):
            self.add(node, ast.unparse(ast.Attribute(node.value, neighbour, node.ctx)))
        self.generic_visit(node)


def module_path(module: str, root: Path = ROOT) -> Path:
    return root / "minidiff" / f"{module}.py"


def mutants_of(module: str, root: Path = ROOT) -> list[Mutant]:
    """The mutants of ``module`` as it is under ``root`` (a run's copy: the checkout may change meanwhile)."""
    source = module_path(module, root).read_text()
    generator = _Generator(module, source)
    generator.visit(ast.parse(source))
    mutants = sorted(generator.mutants, key=lambda m: (m.start, m.end, m.replacement))
    return [m for m in mutants if _compiles(source[:m.start] + m.replacement + source[m.end:])]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<mutant>", "exec")
        return True
    except SyntaxError:
        return False


def keys(mutants: list[Mutant]) -> list[str]:
    """Stable keys ``module:function: original → mutated``, with ``#n`` for the n-th repeat in a function."""
    seen, result = Counter(), []
    for m in mutants:
        key = f"{m.module}:{m.function}: {m.description}"
        seen[key] += 1
        result.append(key if seen[key] == 1 else f"{key} #{seen[key]}")
    return result


def sample(mutants: list[Mutant], limit: int, seed: int = 29) -> list[int]:
    """Indices of at most ``limit`` mutants (0: all), the same every run."""
    if not limit or len(mutants) <= limit:
        return list(range(len(mutants)))
    return sorted(random.Random(seed).sample(range(len(mutants)), limit))


# Running ---------------------------------------------------------------------------------------
def working_copy(folder: Path) -> Path:
    """A copy of the checkout (its built extension included) in ``folder``: the only place mutants are written.

    Run from there, ``import minidiff`` finds the copy before the editable install, and the checkout
    itself is never touched: it can be edited and tested while a run goes on, and a killed run leaves
    nothing behind but a temporary folder. Two folders up from the copy there is no ``shared/data``,
    so the tests see no MNIST, as in a plain checkout.
    """
    copy = folder / "minidiff-mutation"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    return copy


class Mutated:
    """``path`` holding ``source`` for the duration of a ``with`` block, then its original text again."""

    counter = 0

    def __init__(self, path: Path, source: str):
        self.path, self.source = path, source

    def __enter__(self):
        self.original, self.mtime = self.path.read_text(), self.path.stat().st_mtime_ns
        self.path.write_text(self.source)
        # A modification time of its own: bytecode cached for another mutant is never reused.
        Mutated.counter += 1
        os.utime(self.path, ns=(self.mtime, self.mtime + (1000 + Mutated.counter) * 10**9))
        return self

    def __exit__(self, *exc):
        self.path.write_text(self.original)
        os.utime(self.path, ns=(self.mtime, self.mtime))


def preload(copy: Path):
    """Import what the tests import, except minidiff, once for all the forks, which run in ``copy``."""
    os.chdir(copy)
    sys.path[:0] = [str(copy), str(copy / "tests")]
    for name in ("numpy", "hypothesis", "pytest", "PIL.Image", "threadpoolctl", "tqdm"):
        __import__(name)


def pytest(args: list[str], timeout: float) -> str:
    """'killed', 'survived' or 'timeout' for a pytest run of ``args`` (slow tests excluded, stop at the first failure).

    The run is a fork of this process, which has imported pytest, NumPy and the other test dependencies
    but never minidiff (:func:`preload`): the child imports the mutated module fresh, without the second
    or so a new interpreter would take.
    """
    pid = os.fork()
    if pid == 0:  # the child, in its own session so that a timeout also ends the tests' own subprocesses
        code = 1
        try:
            os.setsid()
            sys.dont_write_bytecode = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            code = sys.modules["pytest"].main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *args])
        finally:
            os._exit(int(code))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = None
                return "survived" if os.waitstatus_to_exitcode(status) in (0, 5) else "killed"  # 5: no test selected
            time.sleep(0.02)
        return "timeout"
    finally:
        if pid is not None:  # timed out, or this run is being stopped: the tests go too
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def instrumented(source: str) -> str:
    """``source`` with ``__mutation_hit__(first line)`` as the first statement of every function.

    The tracing run's record of which tests run which function: one cheap call per call of a
    function of this module, where a profiler would slow every call of every module. The line
    passed is the function's first line in the original (its first decorator's, if any).
    """
    lines = source.splitlines(keepends=True)
    inserts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            statement = body[0]
            at = min([statement.lineno] + [d.lineno for d in getattr(statement, "decorator_list", [])])
            if body is node.body[:1] and ast.get_docstring(node) is not None:  # a docstring alone: after it
                at = statement.end_lineno + 1
            inserts.append((at, " " * statement.col_offset, first))
    for at, indent, first in sorted(inserts, reverse=True):
        lines.insert(at - 1, f"{indent}__mutation_hit__({first})\n")
    return "".join(lines)


# A pytest plugin for the tracing run. A call counts for a test when it happens in the test, in the
# setup of a fixture the test uses (a module-scoped fixture is set up once, for all its tests) or
# while the test's file is collected.
TRACER = '''
import builtins, json, os
from pathlib import Path
import pytest

recording = []  # the sets that the calls made now belong to
by_test, by_fixture, by_file, durations = {}, {}, {}, {}


def hit(line):
    for lines in recording:
        lines.add(line)


builtins.__mutation_hit__ = hit  # at import: before any conftest imports the instrumented module


def record(where, key):
    lines = where.setdefault(key, set())
    recording.append(lines)
    yield
    recording.pop()  # hooks nest: the last set in is the first out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield from record(by_test, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    yield from record(by_fixture, fixturedef.argname)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    yield from record(by_file, collector.nodeid.split("::")[0])


def pytest_runtest_logreport(report):
    durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    calls = {}
    for item in session.items:
        lines = set(by_test.get(item.nodeid, ())) | by_file.get(item.nodeid.split("::")[0], set())
        for name in item.fixturenames:
            lines |= by_fixture.get(name, set())
        for line in lines:
            calls.setdefault(line, []).append(item.nodeid)
    Path(os.environ["MUTATION_OUT"]).write_text(json.dumps({"calls": calls, "durations": durations}))
'''


def trace(module: str, copy: Path) -> tuple[dict[int, list[str]], dict[str, float], float]:
    """(first line of each function → the tests that run it, test durations, seconds): one run of the
    mapped test files on the :func:`instrumented` module."""
    path = module_path(module, copy)
    with tempfile.TemporaryDirectory() as folder, Mutated(path, instrumented(path.read_text())):
        Path(folder, "mutation_tracer.py").write_text(TRACER)
        out = Path(folder, "trace.json")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutation_tracer",
                                 "-m", "not slow", *test_files(module)], cwd=copy, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                     "MUTATION_OUT": str(out)})
        elapsed = time.perf_counter() - started
        if result.returncode != 0:  # a mutant could not be told from a test that fails anyway
            raise SystemExit(f"{module}: its tests fail without any mutant:\n{result.stdout[-3000:]}")
        data = json.loads(out.read_text())
    return {int(line): tests for line, tests in data["calls"].items()}, data["durations"], elapsed


def test_files(module: str) -> list[str]:
    return [f"tests/{name}" for name in MODULES[module]]


def covering_tests(mutant: Mutant, calls: dict[int, list[str]], durations: dict[str, float]) -> list[str]:
    """The tests that call a function whose body holds the mutant, fastest first."""
    tests = {test for line, names in calls.items() if mutant.lines[0] <= line <= mutant.lines[1] for test in names}
    return sorted(tests, key=lambda test: (durations.get(test, 0.0), test))


def run_module(module: str, copy: Path, limit: int, equivalent: dict[str, str], log) -> dict:
    path = module_path(module, copy)
    source = path.read_text()
    mutants = mutants_of(module, copy)
    all_keys = keys(mutants)
    chosen = sample(mutants, limit)
    calls, durations, baseline = trace(module, copy)
    log(f"{module}: traced {', '.join(MODULES[module])} in {baseline:.0f} s")
    timeout = 3 * baseline + 30
    results = {}
    started = time.perf_counter()
    for i in chosen:
        mutant, key, begun = mutants[i], all_keys[i], time.perf_counter()
        with Mutated(path, source[:mutant.start] + mutant.replacement + source[mutant.end:]):
            # Module-level code runs on import, for every test; a function only for the tests that call it.
            selected = test_files(module) if mutant.function == "<module>" else covering_tests(mutant, calls, durations)
            outcome = pytest(selected, timeout) if selected else "survived"
        results[key] = outcome
        log(f"{module}: {outcome:8s} {time.perf_counter() - begun:5.1f} s  {key}")
    survivors = [key for key, outcome in results.items() if outcome == "survived"]
    set_aside = [key for key in survivors if key in equivalent]
    counted = len(results) - len(set_aside)
    killed = sum(outcome != "survived" for outcome in results.values())
    return {"module": module, "mutants": len(mutants), "run": len(results), "killed": killed,
            "equivalent": set_aside, "survivors": [key for key in survivors if key not in equivalent],
            "kill_rate": killed / counted if counted else 1.0, "seconds": time.perf_counter() - started + baseline}


def run_gaps(copy: Path, log) -> bool:
    """Apply each of :data:`GAPS` alone and run its test files; True when every one is caught."""
    files = sorted({f"tests/{name}" for *_, names in GAPS for name in names})
    if pytest(files, timeout=1200) != "survived":
        raise SystemExit(f"{' '.join(files)} fail without any bug: fix that first")
    caught = True
    for module, text, bug, files in GAPS:
        path = module_path(module, copy)
        source = path.read_text()
        if source.count(text) != 1:
            raise SystemExit(f"{module}: the text of a GAPS bug is gone or repeated, update it: {text!r}")
        with Mutated(path, source.replace(text, bug)):
            outcome = pytest([f"tests/{name}" for name in files], timeout=600)
        caught &= outcome != "survived"
        log(f"{outcome:8s} {module}: {text} → {bug}")
    return caught


def rescored(summary: dict, equivalent: dict[str, str]) -> dict:
    """``summary`` with its survivors set aside or counted again by the ``equivalent`` list as it is now."""
    survivors = summary["survivors"] + summary["equivalent"]
    set_aside = [key for key in survivors if key in equivalent]
    counted = summary["run"] - len(set_aside)
    return {**summary, "equivalent": set_aside, "survivors": [key for key in survivors if key not in equivalent],
            "kill_rate": summary["killed"] / counted if counted else 1.0}


def report(summaries: list[dict]) -> str:
    lines = ["| module | mutants | run | killed | equivalent | survived | kill rate | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        lines.append(f"| {s['module']} | {s['mutants']} | {s['run']} | {s['killed']} | {len(s['equivalent'])} | "
                     f"{len(s['survivors'])} | {100 * s['kill_rate']:.1f} % | {s['seconds']:.0f} |")
    for s in summaries:
        lines.extend(f"- survived: `{key}`" for key in s["survivors"])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--max-per-module", type=int, default=60, help="sample this many mutants per module (0: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their keys, run nothing")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--gaps", action="store_true", help="only check that issue 29's sixteen bugs are caught")
    parser.add_argument("--jobs", type=int, default=1, help="run the modules in this many processes, one copy each")
    parser.add_argument("--rescore", type=Path, nargs="+", metavar="JSON",
                        help="print the table of earlier --json results with the current equivalent mutants")
    args = parser.parse_args(argv)
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; add them to MODULES with their test files")
    if args.list:
        for module in modules:
            mutants = mutants_of(module)
            chosen = set(sample(mutants, args.max_per_module))
            for i, key in enumerate(keys(mutants)):
                print(("  " if i in chosen else "- ") + key)  # "-": left out of the sample
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the temporary copy is removed
    if args.jobs > 1 and not args.gaps:
        summaries = in_parallel(modules, args.jobs, args.max_per_module)
        return finish(summaries, time.perf_counter(), args)
    equivalent = json.loads(EQUIVALENT_FILE.read_text()) if EQUIVALENT_FILE.exists() else {}
    if args.rescore:
        summaries = [rescored(s, equivalent) for path in args.rescore for s in json.loads(path.read_text())]
        print(report(summaries))
        return 0 if all(s["kill_rate"] >= 0.95 for s in summaries) else 1
    started, summaries = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="minidiff-mutation-") as folder:
        copy = working_copy(Path(folder))
        preload(copy)
        if args.gaps:
            return 0 if run_gaps(copy, print) else 1
        for module in modules:
            summaries.append(run_module(module, copy, args.max_per_module, equivalent,
                                        lambda line: print(line, flush=True)))
            print(f"{module}: {100 * summaries[-1]['kill_rate']:.1f} % in {summaries[-1]['seconds']:.0f} s", flush=True)
            if args.json:  # module by module, so that a run stopped part-way keeps what it finished
                args.json.write_text(json.dumps(summaries, indent=1, ensure_ascii=False))
    return finish(summaries, started, args)


def finish(summaries: list[dict], started: float, args) -> int:
    print(report(summaries))
    print(f"\n{time.perf_counter() - started:.0f} s in all, at most {args.max_per_module or 'all'} mutants a module "
          "(a fixed sample, seed 29)")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1, ensure_ascii=False))
    return 0 if all(s["kill_rate"] >= 0.95 for s in summaries) else 1


def in_parallel(modules: list[str], jobs: int, limit: int) -> list[dict]:
    """The modules dealt round-robin to ``jobs`` runs of this script, each in its own copy; their summaries."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        runs = []
        for job in range(jobs):
            out = Path(folder, f"job{job}.json")
            command = [sys.executable, __file__, "--max-per-module", str(limit), "--json", str(out), *modules[job::jobs]]
            runs.append((subprocess.Popen(command), out))
        try:
            for process, _ in runs:
                process.wait()
        finally:
            for process, _ in runs:
                process.terminate()
        by_module = {s["module"]: s for _, out in runs if out.exists() for s in json.loads(out.read_text())}
    print(f"\n{len(by_module)} of {len(modules)} modules in {time.perf_counter() - started:.0f} s, {jobs} at a time\n")
    return [by_module[module] for module in modules if module in by_module]


if __name__ == "__main__":
    sys.exit(main())
