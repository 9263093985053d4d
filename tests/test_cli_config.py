import tomllib

from mailward.cli.main import main
from mailward.config import load_settings


def test_config_show_round_trips(tmp_path, capsys):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[policy.outbound]\nspam_action = "reject"\nmin_severity = "high"\n[milter]\nworkers = 3\n')
    assert main(["--config", str(cfg), "config", "show"]) == 0
    out = capsys.readouterr().out
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    tomllib.loads(out)
    again = load_settings(shown)
    original = load_settings(cfg)
    assert again == original            # every key printed, and printed so it loads back the same
    assert again.milter.workers == 3
