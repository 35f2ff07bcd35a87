"""The package's layout shows the data flow: imports go one way, down the stages, with no
cycles (imports inside functions count), and the command line starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "camloc"

# Stages in data-flow order; a module may import only from its own stage or earlier ones.
# The doors of the last-but-one stage (jobs, evaluate, train, serve) do not import each other.
STAGES = [
    {"errors", "config", "allocator", "lazy"},
    {"images", "classnames"},
    {"models"},
    {"methods"},
    {"maps", "boxes"},
    {"pipeline"},
    {"dataset"},
    {"render"},
    {"onnx_export", "exports"},
    {"jobs", "evaluate", "train", "serve"},
    {"cli", "__main__"},
]
STAGE = {name: i for i, names in enumerate(STAGES) for name in names}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(("camloc", *parts)).removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """camloc modules imported by ``name`` (anywhere in the file, ``TYPE_CHECKING`` blocks aside)."""
    tree = ast.parse(path.read_text())
    skip = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
            and "TYPE_CHECKING" in ast.unparse(block.test) for part in block.body for node in ast.walk(part)}
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            named = [f"{base}.{alias.name}" for alias in node.names]
            targets = [n for n in named if n in known] or [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("camloc") and target != name:
                found.add(target)
    return found


def stage_of(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    return STAGE[top], top


def test_every_module_has_a_stage():
    for name in modules():
        if name != "camloc":
            assert name.split(".")[1] in STAGE, f"{name}: add its stage to STAGES (and to the README's map)"


def test_imports_go_one_way():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == "camloc":
            continue  # the package face re-exports lazily
        stage, top = stage_of(name)
        for target in imports(name, path, known):
            if target == "camloc":
                continue  # the package face: only errors and the version, the rest lazily
            target_stage, target_top = stage_of(target)
            if target_stage > stage:
                wrong.append(f"{name} (stage {stage}) imports {target} (stage {target_stage})")
            elif target_stage == stage == STAGE["jobs"] and target_top != top:
                wrong.append(f"{name} imports the other door {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    known = modules()
    faces = {name for name, path in known.items() if path.name == "__init__.py"}  # re-exports only
    graph = {name: imports(name, path, known) - faces for name, path in known.items() if name not in faces}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                cycles.append(" → ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_command_line_and_package_face_start_without_torch():
    code = ("import sys, camloc, camloc.cli, camloc.config; "
            "heavy = [m for m in ('torch', 'numpy', 'scipy', 'PIL.ImageDraw', 'fastapi') if m in sys.modules]; "
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_converting_results_needs_no_torch():
    """``camloc convert`` (results.jsonl → detection sets) is file work: no torch loaded."""
    code = ("import sys, camloc.jobs.exporting, camloc.exports; "
            "print([m for m in ('torch', 'torchvision', 'scipy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_importing_camloc_changes_no_global_setting():
    code = ("import os, PIL.Image as I; before = (I.MAX_IMAGE_PIXELS, os.environ.get('KERAS_BACKEND')); "
            "import camloc; m = camloc.load_model('resnet18', weights='random'); "
            "camloc.explain(m, 'examples/images/coffee.jpg'); "
            "after = (I.MAX_IMAGE_PIXELS, os.environ.get('KERAS_BACKEND')); print(before == after)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
