"""deploy/Containerfile, checked statically (no container engine runs here): two stages,
base images at a fixed tag, a numeric non-root user, one entrypoint for every role, and
exactly the runtime half of the README's set-up installed.

The rule for "exactly": the set-up (``make setup``) installs this package with its
``dev`` extra. ``dev`` names the package's own extras (``inferstream[kafka,postgres]``)
and the developers' tools (pytest, ruff, ...). The image installs the package with
exactly those own extras, from wheels built from this tree, and nothing else.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "deploy" / "Containerfile"
PACKAGE = ROOT / "src" / "inferstream"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    image: str
    name: str
    #: (instruction, arguments) in order, continuation lines joined.
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [arguments for name, arguments in self.steps if name == instruction]


def _stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", RECIPE.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            image, _, name = arguments.partition(" AS ")
            stages.append(Stage(image.strip(), name.strip()))
        else:
            stages[-1].steps.append((instruction.upper(), arguments.strip()))
    return stages


def _pip(stage: Stage, verb: str) -> list[list[str]]:
    """The arguments of each ``pip VERB`` a stage runs (RUN lines split at ``&&``)."""
    calls = []
    for run in stage.args("RUN"):
        for command in run.split("&&"):
            words = shlex.split(command)
            for at, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[at + 1] == verb:
                    calls.append(words[at + 2 :])
    return calls


def _targets(arguments: list[str]) -> list[str]:
    """The requirements among pip's arguments (not options, nor an option's value)."""
    valued = {"--wheel-dir", "-w", "--find-links", "-f", "--index-url", "-i", "-r", "-c"}
    targets, skip = [], False
    for word in arguments:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in valued
        else:
            targets.append(word)
    return targets


def _setup_extras() -> set[str]:
    """The extras the README's set-up installs: the ``pip install -e '.[X]'`` in the
    recipe of what ``make setup`` depends on."""
    makefile = (ROOT / "Makefile").read_text()
    (prerequisite,) = re.findall(r"^setup: (\S+)", makefile, re.M)
    recipe = makefile.split(f"\n{prerequisite}:", 1)[1].split("\n\n", 1)[0]
    (extras,) = re.findall(r"pip install --quiet -e '\.\[([\w,]+)\]'", recipe)
    return set(extras.split(","))


def _own_extras(extras: set[str]) -> set[str]:
    """The package's own extras those pull in (``inferstream[kafka,...]`` in them)."""
    name = PYPROJECT["project"]["name"]
    optional = PYPROJECT["project"]["optional-dependencies"]
    own: set[str] = set()
    for extra in extras:
        for requirement in map(Requirement, optional[extra]):
            if requirement.name == name:
                own |= requirement.extras
    return own


def test_the_recipe_builds_wheels_then_installs_them_into_a_slim_runtime() -> None:
    build, runtime = _stages()
    assert build.name == "build" and runtime.name == "runtime"
    assert len(_pip(build, "wheel")) == 1
    assert "slim" in runtime.image
    # The runtime takes the wheels from the build stage, and nothing else from it.
    (run,) = [run for run in runtime.args("RUN") if "pip install" in run]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in run
    assert runtime.args("COPY") == []


def test_every_base_image_has_a_fixed_tag_and_a_python_the_package_supports() -> None:
    images = {stage.image for stage in _stages()}
    # One image for both: wheels built in the first are for the second's interpreter.
    assert len(images) == 1
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"{image}: name a tag"
    assert tag != "latest"
    version = re.match(r"\d+\.\d+", tag)
    assert version is not None, f"{image}: the tag should say the Python version"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version.group())


def test_the_image_runs_as_a_numeric_user_that_is_not_root() -> None:
    runtime = _stages()[-1]
    (user,) = runtime.args("USER")
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without the image's /etc/passwd.
    assert uid.isdigit() and gid.isdigit(), user
    assert int(uid) != 0 and int(gid) != 0
    last_user = max(at for at, (name, _) in enumerate(runtime.steps) if name == "USER")
    assert all(name != "RUN" for name, _ in runtime.steps[last_user:]), "RUN as the user"


def test_one_image_for_every_role_the_command_chooses() -> None:
    runtime = _stages()[-1]
    assert runtime.args("ENTRYPOINT") == ['["inferstream"]']
    assert PYPROJECT["project"]["scripts"]["inferstream"] == "inferstream.cli:main"


def test_the_image_installs_exactly_the_runtime_half_of_the_readmes_set_up() -> None:
    assert _setup_extras() == {"dev"}
    extras = _own_extras(_setup_extras())
    assert extras, "the dev extra names none of the package's own extras"
    build, runtime = _stages()
    wanted = f"[{','.join(sorted(extras))}]"
    # Built from this tree, with those extras...
    (wheel,) = _pip(build, "wheel")
    assert _targets(wheel) == [f".{wanted}"]
    assert set(build.args("COPY")) == {"pyproject.toml README.md LICENSE ./", "src ./src"}
    # ... and installed from those wheels alone: the package, those extras, nothing more.
    (install,) = _pip(runtime, "install")
    assert _targets(install) == [f"inferstream{wanted}"]
    assert "--no-index" in install
    assert install[install.index("--find-links") + 1] == "/wheels"
    assert _pip(runtime, "wheel") == [] and _pip(build, "install") == []


def test_every_file_of_the_package_is_in_its_wheel() -> None:
    """An editable install (the set-up's) sees every file; a wheel (the image's) only the
    package data pyproject.toml names. ``egg_domain.npz`` was once missing from it."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["inferstream"]
    packaged = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    code = {".py", ".pyi", ".pyc"}  # setuptools packs modules and their stubs by itself
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in code and "__pycache__" not in path.parts
    }
    assert data, "no data files found: is the package where this test looks?"
    assert sorted(str(p.relative_to(PACKAGE)) for p in data - packaged) == []


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (.dockerignore: the last match wins)."""
    ignored = False
    for written in patterns:
        negated = written.startswith("!")
        pattern = written.removeprefix("!")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_recipe_copies_and_not_the_virtualenv() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [word for copy in _stages()[0].args("COPY") for word in copy.split()[:-1]]
    assert sources, "the build stage copies nothing"
    assert [source for source in sources if _ignored(source, patterns)] == []
    for kept_out in (".venv", ".inferstream", "tests", ".git", "src/inferstream/__pycache__"):
        assert _ignored(kept_out, patterns), kept_out
