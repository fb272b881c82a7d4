"""The set-up command installs exactly the locked versions (requirements.lock), and the lock agrees
with what pyproject.toml asks for."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"requirements.lock: '{line}' is not NAME==VERSION"
            pins[canonicalize_name(name)] = pinned
    return pins


def test_every_locked_package_is_installed_at_its_locked_version():
    wrong = []
    for name, pinned in locked().items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have != pinned:
            wrong.append(f"{name}: locked {pinned}, installed {have}")
    assert not wrong, "run `bash scripts/bootstrap.sh test` to install the lock: " + "; ".join(wrong)


def test_the_lock_satisfies_pyprojects_requirements():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is required by pyproject.toml but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req.specifier}"
