"""Every name the package's code reads is defined: a renamed argument left behind in one function crashed every
compressed-tensors export at run time (NameError), which no test of that path caught before it was committed."""
import ast
from pathlib import Path

import pytest

checker = pytest.importorskip("pyflakes.checker", reason="pyflakes is in the test extra (pip install -e '.[test]')")
from pyflakes import messages  # noqa: E402

UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


def undefined_names(source: str, filename: str = "<source>") -> list[str]:
    found = checker.Checker(ast.parse(source, filename=filename), filename=filename).messages
    return [f"{filename}:{m.lineno}: {m.message % m.message_args}" for m in found if isinstance(m, UNDEFINED)]


def test_the_check_finds_a_name_left_behind():
    assert undefined_names("def f(weight_method):\n    return weight_range\n")
    assert not undefined_names("def f(weight_range):\n    return weight_range\n")


def test_no_name_in_the_package_is_undefined():
    package = Path(__file__).resolve().parents[1] / "src" / "mixprec"
    found = [line for path in sorted(package.rglob("*.py"))
             for line in undefined_names(path.read_text(), str(path.relative_to(package.parent)))]
    assert not found, "\n".join(found)
