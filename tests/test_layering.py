"""The pipeline flows one way: a lower package never imports a higher one."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["datafeeds", "labeling", "agents", "strategies", "engine"]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_no_upward_imports(package):
    higher = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = {
        f"{path.relative_to(ROOT)} imports {sorted(_imported_packages(path) & higher)}"
        for path in (ROOT / package).rglob("*.py")
        if _imported_packages(path) & higher
    }
    assert not offenders, f"upward imports: {sorted(offenders)}"


def _python_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter at the repository root; it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_backtesting_a_saved_agent_does_not_load_torch():
    # run_backtest.py needs onnxruntime only; torch costs a second of import and ~1 GB of memory.
    _python_ok("import sys, run_backtest, engine; from agents import AgentFileError, OnnxAgent; "
               "assert 'torch' not in sys.modules, 'torch was imported'; "
               "from agents import FocalLoss; assert 'torch' in sys.modules")


def test_loading_data_does_not_load_backtrader():
    _python_ok("import sys, datafeeds, labeling; datafeeds.load_ohlcv('sp500'); "
               "assert 'backtrader' not in sys.modules, 'backtrader was imported'; "
               "from datafeeds import to_backtrader; assert 'backtrader' in sys.modules")


# what --help must not load: each costs 0.1-1.4 s of import (torch alone ~1.4 s, sklearn ~1.2 s here)
HEAVY = ("torch", "pandas", "numba", "backtrader", "matplotlib", "optuna", "onnx", "onnxruntime", "sklearn",
         "scipy", "talib")
_HELP_PROBE = """
import runpy, sys
target = sys.argv[1]
sys.argv = [target, *sys.argv[2:]]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), "EXIT", code, file=sys.stderr)
"""


@pytest.mark.parametrize("cli", ["run_backtest.py", "agents.train", "engine.walkforward", "agents.inspect",
                                 "datafeeds"])
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]])
def test_help_and_usage_errors_answer_before_heavy_imports(cli, argv):
    # --help and argparse errors must come back at once: parse before importing torch, pandas, backtrader ...
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE.format(heavy=HEAVY), cli, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"HEAVY [] EXIT {0 if argv == ['--help'] else 2}", proc.stderr


def test_constants_spelt_out_for_fast_help_match_their_source():
    from engine import backtest_cli as run_backtest
    from strategies import STRATEGIES, SmaCross

    assert run_backtest.STRATEGY_NAMES == tuple(STRATEGIES)
    assert run_backtest.SMA_DEFAULTS == (SmaCross.params.fast, SmaCross.params.slow)


def test_the_walk_forward_engine_choices_are_the_engines_a_backtest_runs_on(capsys):
    # one list, engine.config.ENGINES (import-light, so --help needs no backtrader): every engine a backtest
    # accepts is a --engine choice, the default is one of them, and anything else is refused naming them
    from engine.config import ENGINES, RunConfig
    from engine.walkforward.cli import build_parser
    from engine.walkforward.config import WalkForwardConfig

    for name in ENGINES:
        assert build_parser().parse_args(["--engine", name]).engine == RunConfig(engine=name).engine == name
    assert WalkForwardConfig.engine == RunConfig.engine and RunConfig.engine in ENGINES
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--engine", "numba"])
    assert f"choose from {', '.join(ENGINES)}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ within a package
def _module_name(path: Path) -> str:
    """Dotted name of the module in ``path`` (a package's ``__init__.py`` is the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(source: str, module: str, is_package: bool = False):
    """Every import statement of ``source`` (module-level, in functions, under TYPE_CHECKING alike), as
    (line, module imported from or None for ``import x``, names): relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, None, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target, [alias.name for alias in node.names]


def private_name_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """``from x import _name`` in ``source`` (module ``module``): an underscore-prefixed function, class
    or constant taken from another module. A private *module* imported whole (``from pkg import _mod``)
    is not counted, nor dunders (``__version__``)."""
    found = []
    for line, target, names in _imports(source, module, is_package):
        if target is None:
            continue
        for name in names:
            if name.startswith("_") and not name.startswith("__") and not _is_module(f"{target}.{name}"):
                found.append(f"{module}:{line} imports {name} from {target}")
    return found


def test_engine_modules_import_no_private_names_from_each_other():
    offenders = [
        hit for path in sorted((ROOT / "engine").rglob("*.py"))
        for hit in private_name_imports(path.read_text(), _module_name(path), path.name == "__init__.py")
    ]
    assert not offenders, "private names imported across modules (make them public or keep them in one module): " \
        + "; ".join(offenders)


def test_the_private_name_check_bites():
    snippet = ("from engine.metrics import compute_stats\n"
               "from engine.runner import run_backtest, _check_params as check\n"
               "from . import walkforward\n"  # a module, public
               "from .walkforward import __doc__\n"  # a dunder
               "def later():\n"
               "    from .metrics import _private_helper\n")
    assert private_name_imports(snippet, "engine.fake") == [
        "engine.fake:2 imports _check_params from engine.runner",
        "engine.fake:6 imports _private_helper from engine.metrics",
    ]


def intra_package_imports(source: str, module: str, package: str, is_package: bool = False) -> set[str]:
    """The modules of ``package`` that ``source`` (module ``module``) imports anywhere in its text,
    module-level or inside functions. ``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``; importing ``a.b.c`` counts as importing ``a.b.c`` only (not its parents,
    whose ``__init__`` also runs: counting those would make every lazily loading package a cycle)."""
    edges = set()
    for _, target, names in _imports(source, module, is_package):
        candidates = names if target is None else [f"{target}.{n}" if _is_module(f"{target}.{n}") else target
                                                   for n in names]
        edges.update(c for c in candidates if c == package or c.startswith(package + "."))
    return edges - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> nodes it points to) as [a, b, ..., a], or None if it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("package", LAYERS)
def test_no_import_cycles_within_a_package(package):
    graph = {
        _module_name(path): intra_package_imports(path.read_text(), _module_name(path), package,
                                                  path.name == "__init__.py")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_function_level_circle():
    # the shape engine.fastsim <-> engine.runner had (before engine.results held the result types): one side
    # imports the other inside a function
    runner = ("import numpy\nfrom engine.metrics import compute_stats\n"
              "def run():\n    from engine.fastsim.single import simulate\n")
    fastsim = "from engine.runner import BacktestResult\n"
    graph = {"engine.runner": intra_package_imports(runner, "engine.runner", "engine"),
             "engine.fastsim.single": intra_package_imports(fastsim, "engine.fastsim.single", "engine"),
             "engine.metrics": set()}
    assert graph["engine.runner"] == {"engine.metrics", "engine.fastsim.single"}
    assert find_cycle(graph) == ["engine.fastsim.single", "engine.runner", "engine.fastsim.single"]
    del graph["engine.fastsim.single"]
    assert find_cycle(graph) is None



# ------------------------------------------------------------------------------- agents' subpackages
# top to bottom; a subpackage imports only from its own or a lower rank, never a sibling (data and model)
AGENTS_LAYERS = [("training",), ("artifact",), ("data", "model"), ("resources",)]
AGENTS_RUNNERS = {"train", "inspect"}  # agents/train.py, agents/inspect.py: `python -m agents.train`, `... inspect`


def agents_subpackage(module: str) -> str | None:
    """The subpackage of ``agents`` that ``module`` belongs to; ``"agents"`` for the package itself and its
    runner modules (the top); None outside ``agents``."""
    parts = module.split(".")
    if parts[0] != "agents":
        return None
    return parts[1] if len(parts) > 1 and parts[1] not in AGENTS_RUNNERS else "agents"


def agents_subpackage_imports(source: str, module: str, is_package: bool = False) -> dict[str, list[str]]:
    """The subpackages of ``agents`` that ``source`` (module ``module``) imports, each with the lines that do:
    every import statement counts (module-level, in functions, under TYPE_CHECKING alike)."""
    found: dict[str, list[str]] = {}
    for line, target, names in _imports(source, module, is_package):
        imported = names if target is None else [f"{target}.{n}" if _is_module(f"{target}.{n}") else target
                                                 for n in names]
        for dotted in imported:
            sub = agents_subpackage(dotted)
            if sub is not None:
                found.setdefault(sub, []).append(f"{module}:{line} imports {dotted}")
    return found


def agents_layer_violations(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """Imports in ``graph`` (subpackage -> subpackage it imports -> where) that run up, sideways or to the top."""
    rank = {sub: r for r, subs in enumerate(AGENTS_LAYERS) for sub in subs}
    return [where for sub, targets in sorted(graph.items()) if sub != "agents"
            for target, lines in sorted(targets.items())
            if target != sub and (target not in rank or rank[target] <= rank[sub])
            for where in lines]


def _agents_graph() -> dict[str, dict[str, list[str]]]:
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted((ROOT / "agents").rglob("*.py")):
        module = _module_name(path)
        into = graph.setdefault(agents_subpackage(module), {})
        for sub, lines in agents_subpackage_imports(path.read_text(), module, path.name == "__init__.py").items():
            into.setdefault(sub, []).extend(lines)
    return graph


def test_agents_subpackages_are_the_declared_layers():
    on_disk = {p.parent.name for p in (ROOT / "agents").glob("*/__init__.py")}
    assert on_disk == {sub for subs in AGENTS_LAYERS for sub in subs}
    top = {p.stem for p in (ROOT / "agents").glob("*.py")}
    assert top == {"__init__"} | AGENTS_RUNNERS, "a module of agents belongs in one of its subpackages"


def test_agents_subpackages_import_only_downwards():
    graph = _agents_graph()
    assert not agents_layer_violations(graph), "imports up, sideways or into the agents package: " \
        + "; ".join(agents_layer_violations(graph))
    cycle = find_cycle({sub: set(targets) - {sub} for sub, targets in graph.items()})
    assert cycle is None, f"import cycle between agents' subpackages: {' -> '.join(cycle)}"


def test_the_agents_layer_check_bites():
    prepare = ("from typing import TYPE_CHECKING\nfrom .features import FeatureSpec\n"
               "if TYPE_CHECKING:\n    from ..training.config import TrainConfig\n")
    transformer = "from .config import ModelConfig\ndef f():\n    from agents import FeatureSpec\n"
    losses = "from agents.data import features\n"
    graph = {"data": agents_subpackage_imports(prepare, "agents.data.prepare"),
             "model": {**agents_subpackage_imports(transformer, "agents.model.transformer"),
                       **agents_subpackage_imports(losses, "agents.model.losses")},
             "training": agents_subpackage_imports("from ..artifact.export import export_agent\n",
                                                   "agents.training.trainer")}
    assert graph["data"] == {"data": ["agents.data.prepare:2 imports agents.data.features"],
                             "training": ["agents.data.prepare:4 imports agents.training.config"]}
    assert agents_layer_violations(graph) == [
        "agents.data.prepare:4 imports agents.training.config",  # up, under TYPE_CHECKING too
        "agents.model.transformer:3 imports agents",  # the package's lazy names: the top
        "agents.model.losses:1 imports agents.data.features",  # a sibling
    ]


def test_the_agents_runners_only_run_a_main():
    """agents/train.py and agents/inspect.py keep ``python -m agents.train`` and ``... inspect`` working: each
    imports one ``main`` from its subpackage, nothing more (no shims at old module paths)."""
    for name in sorted(AGENTS_RUNNERS):
        path = ROOT / "agents" / f"{name}.py"
        found = [(target, names) for _, target, names in _imports(path.read_text(), f"agents.{name}")
                 if (target or names[0]).startswith("agents")]
        assert len(found) == 1 and found[0][1] == ["main"], (name, found)


def test_installed_commands_point_at_the_command_lines():
    """pyproject's [project.scripts]: each names a main() that exists; installed (pip install -e), each answers
    --help as its `python ...` form does."""
    import importlib
    import shutil
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"tbm-backtest", "tbm-train", "tbm-walkforward", "tbm-inspect"}
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), target
        path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        assert path, f"{name} is not installed: pip install -e ."
        done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("usage:"), (name, done.stderr)
