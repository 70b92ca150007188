"""A plain, non-editable install carries the twistd plugin, the chat pages and the SQL schemas."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "pushsvc"]
import twisted.plugins.pushsvc_plugin as plugin
from pushsvc.site import webRoot
from pushsvc.store.schema import defaultSchema
print(json.dumps({
    "found": len(makers),
    "plugin": plugin.__file__,
    "web": str(webRoot()),
    "index": (webRoot() / "index.html").is_file(),
    "sql": sorted(p.name for p in defaultSchema("sqlite").iterdir()),
}))
"""


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
        venv.create(env, system_site_packages=True, with_pip=True)
        python = env / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
            check=True,
            cwd=tmp,
        )
        out = subprocess.run(
            [str(python), "-c", PROBE], check=True, cwd=tmp, capture_output=True, text=True
        ).stdout
        probe = json.loads(out)
        site = str(env / "lib")
        self.assertEqual(probe["found"], 1)
        self.assertTrue(probe["plugin"].startswith(site), probe)
        self.assertTrue(probe["web"].startswith(site), probe)
        self.assertTrue(probe["index"])
        self.assertIn("001-initial.sql", probe["sql"])
