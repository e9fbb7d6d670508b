"""The package as it is installed without the source tree (the Docker image runs ``pip
install .``): every file the hub reads at run time beside its modules (templates, fonts, the
FHIR definitions, the migrations) is named by pyproject.toml's package data, which setuptools
reads as globs under ``sip_hub/``."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sip_hub"


def test_every_file_beside_the_modules_is_installed_with_the_package() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["sip_hub"]
    installed = {p for g in globs for p in PACKAGE.glob(g) if p.is_file()}
    needed = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts}
    assert needed, "no data files found: the test looks in the wrong place"
    assert sorted(str(p.relative_to(PACKAGE)) for p in needed - installed) == []
    # (the templates the console renders among them)
    assert PACKAGE / "templates" / "admin" / "console.css" in installed
