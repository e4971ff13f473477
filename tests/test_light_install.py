"""The detector, protocol and simulator never import the ``demo`` extra's
packages (tiled, databroker, matplotlib, rich): a beamline profile that only
needs the detector installs and imports none of them. ``.ci/run`` also runs
``.ci/light_install.py`` in a fresh environment without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "light_install.py"


def test_a_count_on_the_simulator_imports_no_extra(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a count ran" in out.stdout


def test_the_extras_are_declared_as_an_extra() -> None:
    import tomllib

    project = tomllib.loads((SCRIPT.parents[1] / "pyproject.toml").read_text())[
        "project"
    ]
    core = " ".join(project["dependencies"])
    demo = " ".join(project["optional-dependencies"]["demo"])
    for name in ("tiled", "bluesky-tiled-plugins", "databroker", "matplotlib", "rich"):
        assert name not in core, name
        assert name in demo, name
    assert "ophyd-xspress[demo]" in project["optional-dependencies"]["test"]


def test_the_readme_first_command_installs_what_the_demo_needs() -> None:
    readme = (SCRIPT.parents[1] / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert first == "pip install '.[demo]' && ophyd-xspress demo"
