"""`satchel --config FILE` (or $SATCHEL_CONFIG) for every manager command, not only `serve`:
the file's settings under the environment and the options; `--data-dir` given on the command
line wins over the file's `data_dir`. A bad file: one line naming key and file, exit 2,
nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flask")
SATCHEL = Path(sys.executable).with_name("satchel")


def _satchel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    return subprocess.run([str(SATCHEL), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})}, check=False)


def test_db_upgrade_uses_the_data_dir_of_the_settings_file(tmp_path):
    toml = tmp_path / "manager.toml"
    toml.write_text(f"[manager]\ndata_dir = '{tmp_path / 'fleet'}'\n")

    done = _satchel("--config", str(toml), "db", "upgrade")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fleet" / "satchel.db").is_file()


def test_the_settings_file_may_be_named_by_the_environment(tmp_path):
    toml = tmp_path / "manager.toml"
    toml.write_text(f"data_dir = '{tmp_path / 'fleet'}'\n")

    done = _satchel("db", "upgrade", env={"SATCHEL_CONFIG": str(toml)})

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fleet" / "satchel.db").is_file()


def test_data_dir_on_the_command_line_wins_over_the_file(tmp_path):
    toml = tmp_path / "manager.toml"
    toml.write_text(f"[manager]\ndata_dir = '{tmp_path / 'from-file'}'\n")

    done = _satchel("--data-dir", str(tmp_path / "given"), "--config", str(toml), "db",
                    "upgrade")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "given" / "satchel.db").is_file()
    assert not (tmp_path / "from-file").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[manager]\nworkers = 0\n", "workers = 0 is out of range: it must be >= 1"),
    ("[manager]\nport = 'http'\n", "port must be a whole number"),
    ("[manager]\npool_size = 3\n", "unknown setting 'pool_size' (did you mean 'db_pool_size'?)"),
])
def test_a_bad_settings_file_is_refused_in_one_line_and_changes_nothing(tmp_path, text, message):
    toml = tmp_path / "manager.toml"
    toml.write_text(text)

    done = _satchel("--data-dir", str(tmp_path / "data"), "--config", str(toml), "db", "upgrade")

    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: config file {toml}: {message}"]
    assert not (tmp_path / "data").exists()


def test_a_bad_environment_value_is_refused_naming_the_variable(tmp_path):
    done = _satchel("--data-dir", str(tmp_path / "data"), "db", "upgrade",
                    env={"SATCHEL_DB_RETRIES": "many"})

    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: SATCHEL_DB_RETRIES='many' is not a valid integer"]
