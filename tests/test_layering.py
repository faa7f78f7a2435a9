"""The import rules of webapp/, worker/, scheduler/ and wsgi.py, checked by reading the code.

1. No import cycles between our modules. A dependency is any import, wherever it is
   written: at module level or inside a function (a lazy import still needs the other
   module to exist and work). `from pkg import name` depends on the module `pkg.name` when
   there is one, else on `pkg`. `importlib.import_module(...)` depends on every string in
   that file naming one of our modules, absolutely or relative to the file's package
   (that is how webapp/__init__.py and webapp/admin/__init__.py register blueprints).
   Being inside a package is not a dependency on it: Python runs the package's __init__
   first, but the module did not ask for that. So a package's __init__ may import its own
   submodules (to register their views, say) as long as none of them imports the package
   back: `from . import bp` in such a submodule is a cycle (give `bp` a module of its own,
   as webapp/admin/blueprint.py does).
2. webapp does not import worker or scheduler: webapp is the domain and the web app, and
   the worker and the supervisor are built on it. The only exceptions are the CLI commands
   that run worker code in the CLI's own process (`flask sync run --inline`, `flask outbox
   drain --inline`), and only inside that command's function, so that loading the CLI
   loads no worker code.
3. worker and scheduler do not import each other: they are separate processes that meet
   in the database and in Redis.
"""
import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("webapp", "worker", "scheduler")
TOP_LEVEL_MODULES = ("wsgi",)

# (module, function) that may import worker code, and only there.
INLINE_CLI = {
    ("webapp.cli", "run_command"),  # flask sync run --inline
    ("webapp.outbox.cli", "drain_command"),  # flask outbox drain --inline
}


def find_modules():
    """{dotted module name: path} of every Python file of ours."""
    modules = {name: ROOT / f"{name}.py" for name in TOP_LEVEL_MODULES if (ROOT / f"{name}.py").exists()}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


@dataclass(frozen=True, repr=False)
class Import:
    """One dependency: `module` imports `target`, inside `function` (None: at module level),
    or by name (a string given to importlib.import_module)."""

    module: str
    target: str
    function: str | None
    line: int
    by_name: bool = False

    def __repr__(self):
        if self.by_name:
            return f"{self.module} imports {self.target} by name (the string on line {self.line})"
        where = f"in {self.function}()" if self.function else "at module level"
        return f"{self.module} imports {self.target} {where} (line {self.line})"


class _Collector(ast.NodeVisitor):
    """The imports of one file, each with the function it is written in."""

    def __init__(self, module, is_package, modules):
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.functions = []
        self.imports = []
        self.imports_by_name = False

    def _add(self, target, node):
        self.imports.append(Import(self.module, target, self.functions[-1] if self.functions else None, node.lineno))

    def _known(self, name):
        """The longest prefix of a dotted name that is one of our modules, or None."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.modules:
                return candidate
        return None

    def visit_FunctionDef(self, node):
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            target = self._known(alias.name)
            if target:
                self._add(target, node)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            target = submodule if submodule in self.modules else self._known(base)
            if target:
                self._add(target, node)

    def visit_Call(self, node):
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
        if name == "import_module":
            self.imports_by_name = True
        self.generic_visit(node)


def collect_imports(modules=None):
    """Every Import of our modules, imports of themselves left out."""
    modules = modules or find_modules()
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        collector = _Collector(module, path.name == "__init__.py", modules)
        collector.visit(tree)
        if collector.imports_by_name:
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in (node.value, f"{collector.package}.{node.value}"):
                        if name in modules:
                            found.append(Import(module, name, None, node.lineno, by_name=True))
        found.extend(collector.imports)
    return [item for item in found if item.target != item.module]


def find_cycles(imports):
    """The strongly connected components of more than one module (Tarjan), each as a
    readable path through it: any such component holds at least one cycle."""
    graph = {}
    for item in imports:
        graph.setdefault(item.module, set()).add(item.target)
        graph.setdefault(item.target, set())
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, component) for component in components]


def _cycle_through(graph, component):
    """One cycle inside a strongly connected component, as [a, b, ..., a]."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to the start
        node = queue.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    raise AssertionError(f"no cycle in {sorted(component)}")


def _top(module):
    return module.split(".")[0]


def _explain(imports, cycle):
    """Each step of a cycle with the line that makes it."""
    steps = []
    for module, target in zip(cycle, cycle[1:]):
        made = [item for item in imports if item.module == module and item.target == target]
        steps.append(f"  {made[0]}")
    return "\n".join(steps)


def test_no_import_cycles():
    imports = collect_imports()
    cycles = find_cycles(imports)
    assert not cycles, "import cycles:\n" + "\n\n".join(
        " -> ".join(cycle) + "\n" + _explain(imports, cycle) for cycle in cycles)


def test_webapp_imports_worker_or_scheduler_only_in_the_inline_cli():
    wrong = [item for item in collect_imports()
             if _top(item.module) == "webapp" and _top(item.target) in ("worker", "scheduler")
             and (item.module, item.function) not in INLINE_CLI]
    assert not wrong, "webapp must not import worker or scheduler:\n" + "\n".join(map(repr, wrong))


def test_worker_and_scheduler_do_not_import_each_other():
    wrong = [item for item in collect_imports()
             if {_top(item.module), _top(item.target)} == {"worker", "scheduler"}]
    assert not wrong, "worker and scheduler must not import each other:\n" + "\n".join(map(repr, wrong))


def test_the_checks_see_lazy_relative_and_by_name_imports(tmp_path):
    """The collector on a small made-up tree: what the rules above rely on it to see."""
    files = {
        "webapp/__init__.py": "import importlib\nPAGES = ('webapp.admin',)\n"
                              "def create_app():\n    for name in PAGES:\n        importlib.import_module(name)\n",
        "webapp/admin/__init__.py": "import importlib\nbp = 1\nfor m in ('views',):\n"
                                    "    importlib.import_module(f'{__name__}.{m}')\n",
        "webapp/admin/views.py": "from . import bp\n",
        "webapp/models.py": "def f():\n    from .schedules import parse\n",
        "webapp/schedules.py": "from webapp import models\n",
        "webapp/cli.py": "def run_command():\n    from worker.engine import go\n"
                         "def other():\n    import worker.engine\n",
        "worker/__init__.py": "",
        "worker/engine.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {}
    for path in sorted(tmp_path.rglob("*.py")):
        parts = path.relative_to(tmp_path).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports = collect_imports(modules)
    found = {(item.module, item.target, "by name" if item.by_name else item.function) for item in imports}
    assert found == {
        ("webapp", "webapp.admin", "by name"),
        ("webapp.admin", "webapp.admin.views", "by name"),
        ("webapp.admin.views", "webapp.admin", None),  # `bp` is not a module: the package is imported
        ("webapp.models", "webapp.schedules", "f"),
        ("webapp.schedules", "webapp.models", None),
        ("webapp.cli", "worker.engine", "run_command"),
        ("webapp.cli", "worker.engine", "other"),
    }
    cycles = sorted(find_cycles(imports))
    assert cycles == [["webapp.admin", "webapp.admin.views", "webapp.admin"],
                      ["webapp.models", "webapp.schedules", "webapp.models"]]
