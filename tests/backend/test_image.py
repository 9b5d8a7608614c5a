"""The production image ships the backend and the sidecar, not the upstream simulator: a static reading of
deploy/Dockerfile (its stages and COPY sources), its .dockerignore and pyproject's package list, since docker may
not run where the tests do. The simulator is its own target, which the local compose stack builds."""

from __future__ import annotations

import fnmatch
import glob
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from setuptools import find_packages

from tests.backend.harness import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"  # BuildKit's: <Dockerfile>.dockerignore
SIMULATOR = PurePosixPath("inbox_backend/simulator")


@dataclass
class Stage:
    base: str
    name: str | None
    sources: list[str] = field(default_factory=list)  # COPY/ADD sources from the build context


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            found.append(Stage(args[0], args[2] if len(args) > 2 and args[1].upper() == "AS" else None))
        elif instruction in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if not any(w.startswith("--from=") for w in words[1:]):  # another stage's files are counted there
                found[-1].sources.extend(args[:-1])
    return found


def production_sources(all_stages: list[Stage]) -> list[str]:
    """What the default target (the last stage) holds from the context, through the stages it is built FROM."""
    by_name = {stage.name: stage for stage in all_stages if stage.name}
    sources: list[str] = []
    stage: Stage | None = all_stages[-1]
    while stage is not None:
        sources.extend(stage.sources)
        stage = by_name.get(stage.base)
    return sources


def ignored(path: PurePosixPath, patterns: list[str]) -> bool:
    """.dockerignore: a pattern excludes the paths it matches and everything under them."""
    prefixes = [PurePosixPath(*path.parts[: n + 1]).as_posix() for n in range(len(path.parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (bare != pattern and fnmatch.fnmatch(prefix.split("/")[-1], bare)):
                return True
    return False


def copied_files(sources: list[str]) -> set[PurePosixPath]:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files: set[PurePosixPath] = set()
    for source in sources:
        for match in glob.glob(source, root_dir=ROOT):
            root = ROOT / match
            for path in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
                relative = PurePosixPath(path.relative_to(ROOT).as_posix())
                if not ignored(relative, patterns):
                    files.add(relative)
    return files


def distribution_packages() -> list[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))


def test_the_production_image_copies_no_simulator_file() -> None:
    files = copied_files(production_sources(stages(DOCKERFILE.read_text())))
    assert PurePosixPath("inbox_backend/__main__.py") in files and PurePosixPath("proxy/__main__.py") in files
    shipped = sorted(str(f) for f in files if SIMULATOR in f.parents)
    assert not shipped, f"the production image would ship the simulator: {shipped}"


def test_the_production_image_copies_every_module_of_the_distribution() -> None:
    # The backend is copied as inbox_backend/*.py (its subpackages left out): a new subpackage must be added.
    files = copied_files(production_sources(stages(DOCKERFILE.read_text())))
    for package in distribution_packages():
        directory = Path(ROOT, *package.split("."))
        for module in directory.glob("*.py"):
            assert PurePosixPath(module.relative_to(ROOT).as_posix()) in files, f"{module} is not in the image"


def test_the_distribution_leaves_the_simulator_out() -> None:
    packages = distribution_packages()
    assert "inbox_backend" in packages and "proxy" in packages
    assert not [p for p in packages if p.startswith("inbox_backend.simulator")]


def test_the_simulator_is_its_own_target_and_the_local_stack_builds_it() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    simulator = next(stage for stage in all_stages if stage.name == "simulator")
    assert simulator is not all_stages[-1]  # a plain `docker build` is the production image
    assert SIMULATOR / "__main__.py" in copied_files(simulator.sources)  # not left out by the .dockerignore
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert services["simulator"]["build"]["target"] == "simulator"
    assert "inbox_backend.simulator" in services["simulator"]["command"]
    for name in ("backend", "sidecar"):
        assert services[name]["build"]["target"] == all_stages[-1].name
        assert services[name]["image"] != services["simulator"]["image"]
