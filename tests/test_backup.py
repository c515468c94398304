"""`launch.py backup` and `restore`: a consistent copy taken while the server writes,
brought back into a data dir, and refused where it would clobber a running server."""

from __future__ import annotations

import subprocess
import sys
import threading

from benchmarks.load_client import LoadResult, missing_writes, run_writers, seed_answers
from launch import main
from storage import Store
from storage.files import check_file
from tests.live_app import REPO
from training.registry import commit_version, new_temp_dir


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, capture_output=True, text=True)


def test_backup_and_restore_round_trip(tmp_path, capsys):
    data = tmp_path / "data"
    store = Store(data / "exemplar.db")
    ids = store.add_examples([dict(input=f"Question {i}?", output=f"Answer {i}.", source="import") for i in range(30)])
    folder = new_temp_dir(data)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    commit_version(store, data, folder, base_model="base")
    store.activate_version("v1")
    store.close()

    assert main(["backup", str(tmp_path / "bk"), "--data-dir", str(data)]) == 0
    assert "30 examples" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "bk"), "--data-dir", str(data)]) != 0  # never over an earlier backup
    assert "not empty" in capsys.readouterr().err
    assert check_file(tmp_path / "bk" / "exemplar.db") == "ok"

    restored = tmp_path / "restored"
    assert main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored)]) == 0
    back = Store(restored / "exemplar.db")
    assert [back.get_example(i)["output"] for i in ids] == [f"Answer {i}." for i in range(30)]
    version = back.active_version()
    assert version["version"] == "v1" and version["path"] == str((restored / "adapters" / "v1").resolve())
    assert (restored / "adapters" / "v1" / "adapter_model.safetensors").read_bytes() == b"weights"
    back.add_example("New question?", "New answer.", source="admin")
    back.close()

    # An existing database is replaced only when asked.
    assert main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored)]) != 0
    assert "--force" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "bk"), "--data-dir", str(restored), "--force"]) == 0
    again = Store(restored / "exemplar.db")
    assert again.count_examples() == 30
    again.close()


def test_backup_while_fifty_writers_write_then_restore_refused_on_the_live_dir(live_server_factory, tmp_path):
    data = tmp_path / "live"
    messages = seed_answers(data / "exemplar.db", 50)
    server = live_server_factory("--no-retrain-enabled", data_dir=data)  # no automatic training run
    result, stop = LoadResult(), threading.Event()
    writers = threading.Thread(target=run_writers, args=(server.url, messages, 30), kwargs={"stop": stop, "result": result})
    writers.start()
    try:
        while len(result.acknowledged) < 50 and writers.is_alive():
            threading.Event().wait(0.05)
        before = list(result.acknowledged)
        made = cli("backup", str(tmp_path / "bk"), "--data-dir", str(data))
        assert made.returncode == 0, made.stderr
    finally:
        stop.set()
        writers.join()
    assert result.server_errors == 0
    print(f"\nbackup during writes: {len(before)} writes acknowledged before it, {len(result.acknowledged)} in all")
    backup_db = tmp_path / "bk" / "exemplar.db"
    assert check_file(backup_db) == "ok"
    assert missing_writes(backup_db, before) == []  # everything acknowledged before the backup began is in it

    refused = cli("restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force")
    assert refused.returncode != 0 and "in use" in refused.stderr and "Traceback" not in refused.stderr
    assert missing_writes(data / "exemplar.db", result.acknowledged) == []  # the live data was not touched

    restored = tmp_path / "restored"
    assert cli("restore", str(tmp_path / "bk"), "--data-dir", str(restored)).returncode == 0
    assert missing_writes(restored / "exemplar.db", before) == []
