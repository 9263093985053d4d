import tomllib

from mailward.cli.main import main
from mailward.config import load_settings


def test_config_show_round_trips(tmp_path, capsys):
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        '[policy.outbound]\nspam_action = "reject"\nmin_severity = "high"\n[milter]\nworkers = 3\n'
        '[[policy.recipient]]\nmatch = ["ceo@example.org", "example.net"]\nspam_threshold = 0.7\n'
    )
    assert main(["--config", str(cfg), "config", "show"]) == 0
    out = capsys.readouterr().out
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    tomllib.loads(out)
    again = load_settings(shown)
    original = load_settings(cfg)
    assert again == original  # every key printed, and printed so it loads back the same
    assert again.milter.workers == 3
    assert again.policy.recipient[0].policy.spam_threshold == 0.7


def test_global_options_are_accepted_after_the_subcommand(tmp_path, capsys):
    """The README's `mailward config show --config FILE` (and nested commands) must work."""
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "from-file"}"\n[milter]\nworkers = 3\n')
    assert main(["config", "show", "--config", str(cfg)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["milter"]["workers"] == 3 and shown["state_dir"] == str(tmp_path / "from-file")
    assert main(["--config", str(cfg), "config", "show", "--state-dir", str(tmp_path / "other")]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["milter"]["workers"] == 3 and shown["state_dir"] == str(tmp_path / "other")
    assert main(["--config", str(cfg), "quarantine", "list", "--state-dir", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "quarantine").is_dir() and not (tmp_path / "from-file").exists()
