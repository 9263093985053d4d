"""`mailward scan --json` names where a finding was: the object path inside the message."""

import json
import subprocess
import sys

from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import zipped


def test_scan_json_gives_the_object_path(tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(attachments=[("invoice.zip", zipped({"docs/inner.zip": zipped({"eicar.com": EICAR})}))]))
    config = tmp_path / "mailward.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--config", str(config), "scan", "--json", str(eml)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout.splitlines()[0])
    malware = [f for f in doc["findings"] if f["category"] == "malware"]
    assert malware and malware[0]["location"] == "invoice.zip > docs/inner.zip > eicar.com"
    assert doc["action"] == "reject"
