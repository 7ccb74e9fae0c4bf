"""The package stack kernels <- models <- compat <- index <- cli, checked on the source itself."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK = ["kernels", "models", "compat", "index", "cli"]
FORBIDDEN = {
    "compat": {"sqlalchemy", "faiss", "alembic"},
    "models": {"sqlalchemy", "faiss", "alembic"},
}


def imported_modules(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


@pytest.mark.parametrize("package", STACK)
def test_imports_flow_one_way(package: str) -> None:
    above = set(STACK[STACK.index(package) + 1 :])
    bad = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p, m in imported_modules(package)
        if m.split(".")[0] in above | FORBIDDEN.get(package, set())
    ]
    assert not bad, bad


def test_only_kernels_imports_triton() -> None:
    bad = [
        f"{p.relative_to(ROOT)}"
        for pkg in STACK[1:]
        for p, m in imported_modules(pkg)
        if m.split(".")[0] == "triton"
    ]
    assert not bad, bad


def test_migrations_import_only_the_catalog() -> None:
    bad = [
        m
        for _, m in imported_modules("migrations")
        if m.split(".")[0] in STACK and m != "index.catalog"
    ]
    assert not bad, bad


def test_help_does_not_import_heavy_libraries() -> None:
    code = "import sys; from cli.main import app; print(sorted({'torch','faiss','triton'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch) -> None:
    # A checker that cannot fail proves nothing: plant an upward import and watch it fire.
    fake_root = tmp_path
    (fake_root / "models").mkdir()
    (fake_root / "models" / "bad.py").write_text("from index.catalog import Item\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    with pytest.raises(AssertionError, match="imports index.catalog"):
        test_imports_flow_one_way("models")
