"""A plain, non-editable install carries the twistd plugin, the chat pages and the SQL schemas."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib.resources, importlib.util, json, sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "pushsvc"]
import twisted.plugins.pushsvc_plugin as plugin
from pushsvc.http.site import webRoot
from pushsvc.redis import luaSource
from pushsvc.store.schema import defaultSchema
print(json.dumps({
    "found": len(makers),
    "plugin": plugin.__file__,
    "web": str(webRoot()),
    "index": (webRoot() / "index.html").is_file(),
    "page": [p for p in ("vendor/pusher.min.js", "vendor/pusher-js.LICENSE", "sync.js")
             if (webRoot() / p).is_file()],
    "testing_ws": importlib.util.find_spec("pushsvc.testing_ws") is not None,
    "sql": sorted(p.name for p in defaultSchema("sqlite").iterdir()),
    "lua": sorted(p.name for p in importlib.resources.files("pushsvc.redis").joinpath("lua")
                  .iterdir()),
    "luaText": luaSource("join").startswith("--"),
}))
"""


def runningSitePackages() -> list[str]:
    """
    The directories this interpreter imports installed packages from: its virtualenv's (and,
    if that borrows them, its base interpreter's), or the system Python's.
    """
    dirs = [
        *site.getsitepackages(),
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    ]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
    return seen


def borrowingEnv(env: Path) -> Path:
    """
    A new virtualenv at C{env} that imports this interpreter's installed packages (twisted &
    co.) after its own, whether this interpreter is a system Python or itself in a virtualenv.
    C{venv.create(system_site_packages=True)} would not do: from inside a virtualenv it borrows
    the I{base} interpreter's packages, which need not include twisted at all. Returns its python.
    """
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Plain directory lines: appended to sys.path without running their own .pth files, so an
    # editable install of pushsvc there cannot stand in for the wheel under test.
    (Path(purelib) / "borrowed.pth").write_text("".join(d + "\n" for d in runningSitePackages()))
    return python


class WheelTests(SynchronousTestCase):
    def test_wheelInstall(self) -> None:
        """
        From a wheel installed into a new environment, run outside the checkout: twistd finds the
        pushsvc plugin there, and the pages and schemas are read from the installed package.
        """
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)],
            check=True,
            cwd=tmp,
        )
        wheel = next(tmp.glob("pushsvc-*.whl"))
        env = tmp / "venv"
        # The new environment borrows twisted & co. from this one, but gets its own pushsvc.
        python = borrowingEnv(env)
        childEnv = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
            check=True,
            cwd=tmp,
            env=childEnv,
        )
        out = subprocess.run(
            [str(python), "-c", PROBE],
            check=True,
            cwd=tmp,
            capture_output=True,
            text=True,
            env=childEnv,
        ).stdout
        probe = json.loads(out)
        installed = str(env / "lib")
        self.assertEqual(probe["found"], 1)
        self.assertTrue(probe["plugin"].startswith(installed), probe)
        self.assertTrue(probe["web"].startswith(installed), probe)
        self.assertTrue(probe["index"])
        self.assertEqual(
            probe["page"], ["vendor/pusher.min.js", "vendor/pusher-js.LICENSE", "sync.js"]
        )
        self.assertFalse(probe["testing_ws"], "the test client ships in the wheel")
        self.assertIn("001-initial.sql", probe["sql"])
        lua = ["beat", "cached", "channel", "channels", "counts", "join", "leave", "members"]
        lua += ["prelude", "publishCached", "sync", "conns"]
        self.assertEqual(probe["lua"], sorted(f"{name}.lua" for name in lua))
        self.assertTrue(probe["luaText"])
